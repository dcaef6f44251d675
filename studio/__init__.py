"""LoRA Studio: a desktop studio for LoRA adapters over one local chat model."""

__version__ = "0.1.0"
APP_NAME = "LoRA Studio"
ORG_NAME = "LoRA Studio"
