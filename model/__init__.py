"""The GPT model, its DeepSpeed training entry point and its export (added with the training stage)."""
