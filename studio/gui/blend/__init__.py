"""The Blend screen: the form, its parents list and the worker that blends."""
