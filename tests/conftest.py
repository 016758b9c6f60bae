"""Fixtures shared by the whole suite: tiny configs, a tiny trained tokenizer, a saved tiny model folder."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "The quick brown fox jumps over the lazy dog.",
    "import os\nprint(os.getcwd())\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "for i in range(10):\n    print(i * i)\n",
    "Hello world! Hello tokenizer! 你好 🌍",
] * 20


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer (vocab ~300) trained on a few lines; ids 0 = <|endoftext|>, 1 = <|pad|>."""
    from training.data.tokenizer import train_tokenizer

    tok = train_tokenizer(TINY_TEXTS, vocab_size=320, min_frequency=2, model_max_length=64)
    return tok


def make_tiny_config(**overrides):
    """A tiny ScratchGPT config (width 32, 2 layers, 4 heads, context 64)."""
    from scratch_gpt import ScratchGPTConfig

    kwargs = dict(
        vocab_size=320,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )
    kwargs.update(overrides)
    return ScratchGPTConfig(**kwargs)


@pytest.fixture
def tiny_config():
    return make_tiny_config()


@pytest.fixture
def tiny_causal_lm(tiny_config):
    from scratch_gpt import ScratchGPTForCausalLM

    torch.manual_seed(0)
    return ScratchGPTForCausalLM(tiny_config).eval()


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_causal_lm, tiny_tokenizer):
    """A saved tiny causal LM + tokenizer folder, as every stage of the pipeline writes it."""
    path = tmp_path / "tiny-model"
    tiny_causal_lm.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path
