"""Benchmark evaluation with lm-evaluation-harness: the library call (`evaluate`) and the command (`commands`)."""
