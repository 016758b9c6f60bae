"""The `train-tokenizer` and `corpus-stats` subcommands, through the real dispatcher."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

import scratch_gpt_cli

pytestmark = pytest.mark.usefixtures("isolated_datasets_cache")


def _corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(20):
        (folder / f"m{i}.py").write_text(f"def f{i}(a, b):\n    return a * {i} + b\n" * 5, encoding="utf-8")
    return folder


def test_train_tokenizer_writes_a_loadable_folder(tmp_path, capsys):
    out = tmp_path / "tok"
    rc = scratch_gpt_cli.main(["train-tokenizer", "--dataset", str(_corpus(tmp_path)), "--vocab-size", "300",
                               str(out)])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    tok = AutoTokenizer.from_pretrained(out)
    assert summary["vocab_size"] == len(tok) <= 300
    assert (tok.eos_token_id, tok.pad_token_id) == (summary["eos_token_id"], summary["pad_token_id"]) == (0, 1)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tok")]  # no temp folder left behind
    # An existing folder is not overwritten without --overwrite: one-line error, exit 1.
    rc = scratch_gpt_cli.main(["train-tokenizer", "--dataset", str(tmp_path / "corpus"), str(out)])
    assert rc == 1 and "--overwrite" in capsys.readouterr().err


def test_corpus_stats_json(tmp_path, capsys, tiny_tokenizer):
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    rc = scratch_gpt_cli.main(["corpus-stats", "--dataset", str(_corpus(tmp_path)), "--tokenizer",
                               str(tmp_path / "tok"), "--vocab-size", "512", "--block-size", "16",
                               "--validation-fraction", "0.2", "--json"])
    assert rc == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["train"]["documents"] + stats["validation"]["documents"] == 20
    for split in ("train", "validation"):
        s = stats[split]
        assert s["blocks"] == s["tokens"] // 16 > 0
        assert abs(s["bytes_per_token"] - s["bytes"] / s["tokens"]) < 1e-3


def test_corpus_stats_table_and_user_error(tmp_path, capsys, tiny_tokenizer):
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    argv = ["corpus-stats", "--dataset", str(_corpus(tmp_path)), "--tokenizer", str(tmp_path / "tok"),
            "--block-size", "16"]
    assert scratch_gpt_cli.main(argv + ["--vocab-size", "512"]) == 0
    out = capsys.readouterr().out
    assert "bytes_per_token" in out and "validation" in out
    assert scratch_gpt_cli.main(argv + ["--vocab-size", "300"]) == 1  # tokenizer larger than the model vocab
    assert "the model vocabulary has only 300" in capsys.readouterr().err
