"""Everything that touches torch, transformers, peft and bitsandbytes. Never imports Qt."""
