"""Backbones (the only code that touches open_clip) and the LoRA-family adapters."""
