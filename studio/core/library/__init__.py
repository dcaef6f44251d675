"""The adapter library: adapter folders, their manifests, the library itself, archives and Ollama bundles."""
