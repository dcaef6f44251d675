"""Plain-Python heart of the studio: paths, configs, events, the adapter library, datasets.

Nothing here imports Qt, and torch/transformers are imported only inside the functions that need
them, so `import studio.core` stays fast and headless.
"""
