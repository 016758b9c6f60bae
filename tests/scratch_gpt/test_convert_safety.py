"""convert-gpt2 is strict on the checkpoint, names every bad source, and writes all-or-nothing (issue 11)."""

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

import scratch_gpt_cli
from scratch_gpt.convert import check_gpt2_source, convert_gpt2_checkpoint, load_gpt2_strict
from tests.conftest import make_tiny_config

SHAPE = dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=320, bos_token_id=0, eos_token_id=0)


def _tree_hash(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def _error_lines(stderr):
    """The CLI's own error lines (progress bars and library logging may also write to stderr)."""
    return [line for line in stderr.splitlines() if line.startswith("scratch-gpt ")]


@pytest.fixture
def gpt2_dir(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(**SHAPE)).save_pretrained(path)
    return path


def _drop_weight(folder, key):
    weights = load_file(folder / "model.safetensors")
    del weights[key]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def test_missing_weight_is_an_error_naming_it_not_random_init(gpt2_dir, tmp_path):
    _drop_weight(gpt2_dir, "transformer.h.0.mlp.c_fc.bias")
    with pytest.raises(ValueError, match=r"h\.0\.mlp\.c_fc\.bias"):
        convert_gpt2_checkpoint(gpt2_dir, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2"]  # no output, no staging leftovers


def test_failed_overwrite_keeps_the_old_output(gpt2_dir, tmp_path):
    out = convert_gpt2_checkpoint(gpt2_dir, tmp_path / "out")
    before = _tree_hash(out)
    _drop_weight(gpt2_dir, "transformer.wpe.weight")
    with pytest.raises(ValueError, match="wpe"):
        convert_gpt2_checkpoint(gpt2_dir, out, overwrite=True)
    assert _tree_hash(out) == before


def test_overwrite_replaces_with_the_new_complete_result(gpt2_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old run")
    convert_gpt2_checkpoint(gpt2_dir, out, overwrite=True)
    assert not (out / "stale.txt").exists()
    ids = torch.tensor([[1, 2, 3]])
    ref = GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(out).eval()(ids).logits, ref(ids).logits)


def test_output_inside_the_source_is_refused(gpt2_dir):
    before = _tree_hash(gpt2_dir)
    with pytest.raises(ValueError, match="inside the input"):
        convert_gpt2_checkpoint(gpt2_dir, gpt2_dir / "converted")
    with pytest.raises(ValueError, match="destroy the input"):
        convert_gpt2_checkpoint(gpt2_dir, gpt2_dir, overwrite=True)
    assert _tree_hash(gpt2_dir) == before


def test_bad_sources_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("hi")
    scratch = tmp_path / "scratch"
    from scratch_gpt import ScratchGPTForCausalLM

    ScratchGPTForCausalLM(make_tiny_config()).save_pretrained(scratch)
    bert = tmp_path / "bert"
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)).save_pretrained(bert)
    no_weights = tmp_path / "no_weights"
    GPT2Config(**SHAPE).save_pretrained(no_weights)
    cases = {
        str(tmp_path / "missing"): (FileNotFoundError, "does not exist"),
        "./not/here": (FileNotFoundError, "does not exist"),
        str(tmp_path / "empty"): (ValueError, "empty folder"),
        str(tmp_path / "file.txt"): (ValueError, "is a file"),
        str(scratch): (ValueError, "already a scratch-gpt model"),
        str(bert): (ValueError, "'bert' model, not GPT-2"),
        str(no_weights): (ValueError, "no weights"),
    }
    for src, (error, words) in cases.items():
        with pytest.raises(error, match=words):
            check_gpt2_source(src)


def test_wrong_config_types_and_corrupt_weights(gpt2_dir):
    config = json.loads((gpt2_dir / "config.json").read_text())
    (gpt2_dir / "config.json").write_text(json.dumps({**config, "n_embd": "32"}))
    with pytest.raises(ValueError, match="n_embd must be a positive integer"):
        check_gpt2_source(gpt2_dir)
    (gpt2_dir / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        check_gpt2_source(gpt2_dir)
    (gpt2_dir / "config.json").write_text(json.dumps(config))
    data = (gpt2_dir / "model.safetensors").read_bytes()
    (gpt2_dir / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_gpt2_strict(gpt2_dir)


def test_hub_id_while_offline_is_one_clear_line(tmp_path, capsys):
    rc = scratch_gpt_cli.main(["convert-gpt2", "nobody-here/no-such-gpt2", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1 and len(_error_lines(err)) == 1 and "Traceback" not in err
    assert "nobody-here/no-such-gpt2" in err and "local GPT-2 folder" in err
    assert not (tmp_path / "out").exists()


def test_cli_missing_weight_one_line(gpt2_dir, tmp_path, capsys):
    _drop_weight(gpt2_dir, "transformer.h.0.mlp.c_fc.bias")
    rc = scratch_gpt_cli.main(["convert-gpt2", str(gpt2_dir), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1 and "h.0.mlp.c_fc.bias" in err and "Traceback" not in err
    assert len(_error_lines(err)) == 1
