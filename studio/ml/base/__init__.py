"""The base model in torch: this machine's devices, loading a base (quantized or not), the default model."""
