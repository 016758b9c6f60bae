"""`scratch-gpt generate` on a model folder written by the pretraining loop."""

from __future__ import annotations

import pytest
import torch

from tests.training.pretrain.helpers import make_blocks, make_tokenizer, tiny_args
from training.pretrain.loop import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("gen") / "run"
    return train(tiny_args(out, max_steps=2), datasets=make_blocks(), tokenizer=make_tokenizer()).run_dir


def test_generate_command_streams_seeded_samples(model_dir, capsys):
    from scratch_gpt_cli import main

    argv = ["generate", str(model_dir), "--prompt", "def f", "--max-new-tokens", "5", "--num-samples", "2",
            "--seed", "3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("--- sample") == 2 and out.count("def f") >= 2
    assert main(argv) == 0
    assert capsys.readouterr().out == out  # same seeds, same samples


def test_generate_rejects_bad_sampling_values(model_dir, capsys):
    from scratch_gpt_cli import main

    assert main(["generate", str(model_dir), "--top-p", "1.5"]) != 0  # exit codes: issue 11
    assert "--top-p" in capsys.readouterr().err
