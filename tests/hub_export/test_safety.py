"""Issue 11 for export: no local path reaches the published files; read and write failures name the file and the
fix and leave OUT_DIR as it was; a damaged weights file is refused before anything is loaded."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

import hub_export.export
from hub_export.card import CardOptions, build_model_card
from hub_export.export import export_model
from scratch_gpt import run_folder

from .conftest import LM_EVAL, make_model_dir

SECRET = "private_medical_notes"


def _fake_private_run(root: Path) -> Path:
    """A run folder whose settings and records point into a folder named private_medical_notes."""
    private = root / SECRET
    model = make_model_dir(root / "runs" / "notes-gpt")
    run_folder.save_training_args(model, {
        "dataset": str(private / "notes.txt"),
        "tokenizer": str(private / "tokenizer"),
        "output_dir": str(model),
        "data": {"train_file": f"{SECRET}/notes.jsonl", "validation_file": f"./{SECRET}/val.jsonl"},
        "init_from": str(private / "base-model"),
        "learning_rate": 0.001,
    })
    run_folder.save_log_history(model, [{"step": 5, "eval_loss": 3.2, "eval_dataset": str(private / "val.txt")}],
                                best_model_checkpoint=str(private / "ckpt"))
    lm_eval = {**LM_EVAL, "config": {"model_args": f"pretrained={private}/model"}}
    run_folder.save_results(model, "eval", {"eval_loss": 3.2, "eval_file": str(private), run_folder.LM_EVAL_KEY: lm_eval})
    run_folder.save_results(model, "train", {"train_loss": 3.0, "train_file": f"{SECRET}/notes.txt"})
    return model


def test_local_paths_never_reach_the_export(tmp_path):
    model = _fake_private_run(tmp_path)
    out = tmp_path / "export"
    result = export_model(model, out)
    leaks = [f for f in result.files if SECRET.encode() in (out / f).read_bytes()]
    assert not leaks, f"{SECRET} appears in {leaks}"
    assert str(tmp_path).encode() not in b"".join((out / f).read_bytes() for f in result.files)
    card = (out / run_folder.MODEL_CARD_FILE).read_text()
    assert "- Dataset: `notes.txt`" in card  # a local dataset is published by its base name only
    assert "| data.train_file | `notes.jsonl` |" in card and "| learning_rate | `0.001` |" in card
    assert "base_model" not in card.split("---")[1]  # a local base model is not a Hub id


def test_card_dataset_text_is_published_as_given():
    config = {"model_type": "scratch_gpt", "architectures": ["ScratchGPTForCausalLM"], "vocab_size": 300}
    text = str(build_model_card(config, export_format="remote-code", task="text-generation", num_parameters=1,
                                run_dir=None, plot_name=None, has_tokenizer=True,
                                options=CardOptions(dataset_text=f"{SECRET} (de-identified, internal)")))
    assert f"- Dataset: `{SECRET} (de-identified, internal)`" in text


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".staging-" in p.name or ".old-" in p.name]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_weights_are_refused_naming_the_file(tmp_path, damage):
    model = make_model_dir(tmp_path / "model")
    weights = model / run_folder.WEIGHTS_FILES[0]
    data = weights.read_bytes()
    weights.write_bytes({"truncate": data[:-100], "garbage": b"\xff" * 64 + data[64:], "empty": b""}[damage])
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="truncated or corrupt") as info:
        export_model(model, out)
    assert str(weights) in str(info.value) and "save the model again" in str(info.value)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_missing_shard_is_named(tmp_path):
    model = make_model_dir(tmp_path / "model")
    (model / run_folder.WEIGHTS_FILES[0]).rename(model / "model-00001-of-00002.safetensors")
    run_folder.write_json(model, run_folder.WEIGHTS_FILES[1], {"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors, which is missing"):
        export_model(model, tmp_path / "out")


def test_disk_full_names_out_dir_and_leaves_it_as_it_was(run_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("previous export")

    def full_disk(source, stage):
        raise OSError(errno.ENOSPC, "No space left on device", str(stage / "tokenizer.json"))

    monkeypatch.setattr(hub_export.export, "write_tokenizer", full_disk)
    with pytest.raises(OSError, match="no space left on the device") as info:
        export_model(run_dir, out, overwrite=True)
    assert str(out) in str(info.value) and "another disk" in str(info.value)
    assert [p.name for p in out.iterdir()] == ["previous.txt"] and _leftovers(tmp_path) == []


def test_unreadable_model_file_names_file_and_fix(tmp_path, monkeypatch):
    model = make_model_dir(tmp_path / "model")
    real = run_folder.read_json

    def denied(folder, name, default=None):
        if name == run_folder.CONFIG_FILE:
            raise PermissionError(errno.EACCES, "Permission denied", str(Path(folder) / name))
        return real(folder, name, default)

    monkeypatch.setattr(run_folder, "read_json", denied)
    with pytest.raises(PermissionError, match="permission denied; make it readable") as info:
        export_model(model, tmp_path / "out")
    assert str(model / run_folder.CONFIG_FILE) in str(info.value)


def test_out_dir_that_is_a_file_is_refused_early(run_dir, tmp_path):
    target = tmp_path / "file"
    target.write_text("not a folder")
    with pytest.raises(FileExistsError, match="is a file"):
        export_model(run_dir, target, overwrite=True)
    assert target.read_text() == "not a folder"


def test_corrupt_record_names_the_file(tmp_path):
    model = make_model_dir(tmp_path / "model")
    (model / run_folder.results_file("eval")).write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        export_model(model, tmp_path / "out")
    assert json.loads((model / run_folder.CONFIG_FILE).read_text())["model_type"] == "scratch_gpt"


def test_unmerged_lora_adapter_is_pointed_to_merge(tmp_path):
    folder = tmp_path / "lora-run"
    folder.mkdir()
    run_folder.write_json(folder, run_folder.ADAPTER_FILES[0], {"peft_type": "LORA"})
    (folder / run_folder.ADAPTER_FILES[1]).write_bytes(b"")
    with pytest.raises(ValueError, match="LoRA adapter.*--merge"):
        export_model(folder, tmp_path / "out")
