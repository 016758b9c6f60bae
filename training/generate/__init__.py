"""Sampling from a trained model: the `generate` command (`commands`)."""
