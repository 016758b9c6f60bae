"""Fixtures for the data-pipeline tests: a tiny in-memory corpus and a tokenizer trained on it."""

from __future__ import annotations

import pytest

TINY_DOCS = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "import os\nprint(os.getcwd())\n",
    "for i in range(10):\n    print(i * i)\n",
    "# A comment with unicode: héllo wörld, 日本語, emoji 😀\n",
    "x = [n for n in range(100) if n % 3 == 0]\n",
    "while True:\n    break\n",
    "with open('f.txt') as fh:\n    data = fh.read()\n",
] * 4


@pytest.fixture(scope="session")
def tiny_docs() -> list[str]:
    return list(TINY_DOCS)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from training.tokenizer import train_tokenizer

    return train_tokenizer(TINY_DOCS, vocab_size=400, min_frequency=2)
