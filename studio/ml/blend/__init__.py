"""Blending adapters with peft, and resizing one by SVD."""
