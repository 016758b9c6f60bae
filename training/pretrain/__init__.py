"""Pretraining: options and presets (`arguments`), the Accelerate loop (`loop`), the `train` command (`commands`)."""
