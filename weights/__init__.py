"""The shipped checkpoints: ``NAME.safetensors`` with its model card ``NAME.json`` (data, no code)."""
