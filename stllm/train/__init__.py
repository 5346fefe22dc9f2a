"""Training utilities: memory planning for DeepSpeed ZeRO runs."""
