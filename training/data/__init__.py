"""Corpus to packed blocks: loading (`corpus`), BPE tokenizer training (`tokenizer`), packing (`packing`),
and the `train-tokenizer` / `corpus-stats` commands (`commands`)."""
