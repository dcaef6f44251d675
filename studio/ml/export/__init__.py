"""Exports: a merged standalone model, GGUF files for llama.cpp and Ollama, library exports by id."""
