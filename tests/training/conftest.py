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
    from training.data.tokenizer import train_tokenizer

    return train_tokenizer(TINY_DOCS, vocab_size=400, min_frequency=2)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests with one torch intra-op thread, restoring the previous count afterwards.

    Tiny models on a shared 2-core machine: one thread avoids oversubscription stalls. Used by the training
    modules through ``pytestmark``; not autouse."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def isolated_datasets_cache(tmp_path_factory):
    """Keep the datasets cache of the data tests out of the user's cache (and start it empty).

    Used by the data-pipeline modules through ``pytestmark``; not autouse, so other tests here are unaffected."""
    import datasets

    old = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = tmp_path_factory.mktemp("hf_datasets_cache")
    datasets.disable_progress_bars()
    yield
    datasets.config.HF_DATASETS_CACHE = old
    datasets.enable_progress_bars()


def reference_stream(tokenizer, docs) -> list[int]:
    """The token stream packing must produce: each non-empty document's ids followed by EOS."""
    out: list[int] = []
    for d in docs:
        if d:
            out += tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return out
