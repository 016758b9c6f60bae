"""Export to a Hub repo folder: remote code, gpt2 format, self-check, atomic output, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import scratch_gpt
from hub_export.export import _check_remote_file, export_model, read_model_config
from hub_export.verify import ExportVerificationError
from scratch_gpt import run_folder
from tests.scratch_gpt.helpers import assert_logits_close

from .conftest import LABELS, make_model_dir


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if any(tag in p.name for tag in (".tmp-", ".old-", ".staging-"))]


def test_causal_lm_remote_code_export(lm_export, run_dir):
    out = lm_export.out_dir
    files = set(lm_export.files)
    # sharded above --max-shard-size, with the index transformers reads
    assert "model.safetensors.index.json" in files
    shards = sorted(f for f in files if f.startswith("model-") and f.endswith(".safetensors"))
    assert len(shards) >= 2
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 run_folder.MODEL_CARD_FILE, run_folder.LOSS_PLOT_FILE):
        assert name in files, name
    plot = run_folder.LOSS_PLOT_FILE
    assert (out / plot).read_bytes() == (run_dir / plot).read_bytes()

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "scratch_gpt"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_scratch_gpt.ScratchGPTConfig",
        "AutoModel": "modeling_scratch_gpt.ScratchGPTModel",
        "AutoModelForCausalLM": "modeling_scratch_gpt.ScratchGPTForCausalLM",
        "AutoModelForSequenceClassification": "modeling_scratch_gpt.ScratchGPTForSequenceClassification",
    }
    # every module an auto_map entry names is shipped, byte-identical to the package, and nothing else of it
    package = Path(scratch_gpt.__file__).parent
    shipped = {f for f in files if f.endswith(".py")}
    assert {v.split(".")[0] + ".py" for v in config["auto_map"].values()} <= shipped
    assert "__init__.py" not in shipped
    for name in shipped:
        assert (out / name).read_bytes() == (package / name).read_bytes()
        _check_remote_file(out / name)  # only stdlib / torch / transformers / siblings

    # the self-check ran in a process that could not import scratch_gpt and built the model from the export
    v = lm_export.verification
    assert v["model_class"].startswith("transformers_modules.")
    assert v["model_class"].endswith("modeling_scratch_gpt.ScratchGPTForCausalLM")
    assert v["max_abs_diff"] == 0.0
    assert v["generation_match"] is True
    assert v["pipeline_match"] is True and v["pipeline_output"].startswith("Every effort moves you")
    assert lm_export.warnings == []
    assert _leftovers(out.parent) == []


def test_sequence_classifier_export(cls_export, cls_dir):
    out = cls_export.out_dir
    assert cls_export.task == "text-classification"
    assert "model.safetensors" in cls_export.files  # small: one file
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["ScratchGPTForSequenceClassification"]
    assert "AutoModelForSequenceClassification" in config["auto_map"]
    assert {int(k): v for k, v in config["id2label"].items()} == LABELS
    v = cls_export.verification
    assert v["model_class"].startswith("transformers_modules.")
    assert v["model_class"].endswith("ScratchGPTForSequenceClassification")
    assert v["max_abs_diff"] == 0.0
    assert v["pipeline_output"]["label"] in LABELS.values() and v["pipeline_match"] is True

    # independent check of the pipeline's answer: the source model's argmax on the same text
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(cls_dir).eval()
    tok = AutoTokenizer.from_pretrained(cls_dir)
    with torch.no_grad():
        logits = model(**tok("This is a fine example.", return_tensors="pt")).logits
    assert LABELS[int(logits.argmax(-1))] == v["pipeline_output"]["label"]
    assert v["pipeline_output"]["score"] == pytest.approx(float(logits.softmax(-1).max()), abs=1e-5)


def test_gpt2_format_without_tokenizer_over_existing_dir(tmp_path, caplog):
    """gpt2 format (GPT2LMHeadModel, no remote code), a model without tokenizer (warning), --overwrite."""
    from transformers import GPT2LMHeadModel

    from scratch_gpt import ScratchGPTForCausalLM

    src = make_model_dir(tmp_path / "bare", tokenizer=False, seed=3)
    out = tmp_path / "gpt2-export"
    with pytest.raises(ValueError, match="--require-tokenizer"):
        export_model(src, out, export_format="gpt2", require_tokenizer=True)
    assert not out.exists()
    out.mkdir()
    (out / "stale.txt").write_text("old export")
    with caplog.at_level("WARNING", logger="hub_export.export"):
        result = export_model(src, out, export_format="gpt2", overwrite=True)

    # the tokenizer is missing: exported with a warning, the card says so, the pipeline check is skipped
    assert any("no tokenizer" in w for w in result.warnings)
    assert any("no tokenizer" in r.getMessage() for r in caplog.records)
    assert not any(f.startswith("tokenizer") for f in result.files)
    assert "No tokenizer is included" in (out / "README.md").read_text()
    assert result.verification["pipeline_output"] is None
    # replaced, not merged; no temporary folders left behind
    assert not (out / "stale.txt").exists() and _leftovers(tmp_path) == []

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gpt2" and "auto_map" not in config
    assert not [f for f in result.files if f.endswith(".py")]
    assert result.verification["model_class"] == "transformers.models.gpt2.modeling_gpt2.GPT2LMHeadModel"
    assert 0 < result.verification["tolerance"] < 1e-3  # from the arithmetic (verify.logits_tolerance)
    assert result.verification["max_abs_diff"] <= result.verification["tolerance"]

    # reload here with transformers' own GPT-2 (no remote code) and compare with the source (fp32 rounding only)
    gpt2 = GPT2LMHeadModel.from_pretrained(out).eval()
    source = ScratchGPTForCausalLM.from_pretrained(src).eval()
    ids = torch.randint(0, source.config.vocab_size, (3, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_logits_close(gpt2(ids).logits, source(ids).logits, source.config)
    # Conv1D layout: GPT-2 stores c_attn as (in, out) = the transpose of our nn.Linear (out, in)
    ours = source.state_dict()["transformer.h.0.attn.c_attn.weight"]
    theirs = gpt2.state_dict()["transformer.h.0.attn.c_attn.weight"]
    assert theirs.shape == ours.T.shape and torch.equal(theirs, ours.T)


def test_gpt2_format_refuses_inexpressible_config(tmp_path):
    src = make_model_dir(tmp_path / "rms", norm_type="rmsnorm")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="(?i)rmsnorm"):
        export_model(src, out, export_format="gpt2")
    assert not out.exists() and _leftovers(tmp_path) == []


def test_gpt2_format_refuses_classifier(cls_dir, tmp_path):
    with pytest.raises(ValueError, match="text-generation models only"):
        export_model(cls_dir, tmp_path / "out", export_format="gpt2")


def test_not_a_scratch_gpt_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_model(tmp_path / "missing", tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        export_model(empty, tmp_path / "out")
    gpt2_dir = tmp_path / "gpt2"
    gpt2_dir.mkdir()
    (gpt2_dir / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type='gpt2'.*convert-gpt2"):
        export_model(gpt2_dir, tmp_path / "out")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"model_type": "scratch_gpt"}))
    with pytest.raises(FileNotFoundError, match="no weights"):
        read_model_config(no_weights)
    assert not (tmp_path / "out").exists()


def test_existing_out_dir_refused_and_bad_options(run_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_model(run_dir, out)
    assert (out / "keep.txt").read_text() == "user data"
    with pytest.raises(ValueError, match="inside the input"):
        export_model(run_dir, run_dir / "export", overwrite=True)
    with pytest.raises(ValueError, match="is the input"):
        export_model(run_dir, run_dir, overwrite=True)
    with pytest.raises(ValueError, match="contains the input"):
        export_model(run_dir, run_dir.parent, overwrite=True)
    assert (run_dir / run_folder.CONFIG_FILE).is_file()
    with pytest.raises(ValueError, match="max-shard-size"):
        export_model(run_dir, tmp_path / "x", max_shard_size="lots")
    with pytest.raises(ValueError, match="unknown export format"):
        export_model(run_dir, tmp_path / "x", export_format="onnx")


def test_failed_self_check_leaves_out_dir_untouched(run_dir, tmp_path, monkeypatch):
    import hub_export.verify

    def failing(*args, **kwargs):
        raise ExportVerificationError("logits differ from the source by 1 (tolerance 1e-05)")

    monkeypatch.setattr(hub_export.verify, "verify_export", failing)
    out = tmp_path / "out"
    with pytest.raises(ExportVerificationError):
        export_model(run_dir, out)
    assert not out.exists() and _leftovers(tmp_path) == []

    out.mkdir()
    (out / "previous.txt").write_text("previous export")
    with pytest.raises(ExportVerificationError):
        export_model(run_dir, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["previous.txt"] and _leftovers(tmp_path) == []


def test_remote_code_guard_refuses_foreign_imports(tmp_path):
    bad = tmp_path / "modeling_bad.py"
    bad.write_text("import numpy\nimport torch\n")
    with pytest.raises(ValueError, match="numpy"):
        _check_remote_file(bad)
    bad.write_text("from . import attention\n")
    with pytest.raises(ValueError, match="from . import"):
        _check_remote_file(bad)
    good = tmp_path / "modeling_good.py"
    good.write_text("import math\nimport torch\nfrom transformers import PreTrainedModel\nfrom .attention import f\n")
    _check_remote_file(good)


def test_run_records_travel_numbers_only(lm_export, run_dir):
    """The export carries the run's results and log history (as Trainer's push does), with no string values."""
    out = lm_export.out_dir
    assert run_folder.load_log_history(out) == run_folder.load_log_history(run_dir)
    results = run_folder.load_results(out)
    assert results["train"] == run_folder.load_results(run_dir)["train"]
    lm_eval = results["eval"][run_folder.LM_EVAL_KEY]
    assert lm_eval["results"]["hellaswag"] == {"acc,none": 0.2625, "acc_stderr,none": 0.0139, "acc_norm,none": 0.27}
    assert "config" not in lm_eval  # model_args and other strings dropped
    assert run_folder.TRAINING_ARGS_FILE not in lm_export.files  # the card shows its public part
