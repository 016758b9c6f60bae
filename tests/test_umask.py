"""Every output follows the user's umask: a run folder, a finetuned folder and an export, under 022 and 077.

transformers 5.25's ``save_pretrained`` writes ``model.safetensors`` as 0600 and every other file as the umask
gives; copies (``shutil.copy2``) keep their source's mode. ``scratch_gpt.safe_output`` sets the umask's modes on
everything it publishes, so each folder below must hold only files of mode ``0o666 & ~umask`` and folders of
``0o777 & ~umask``. Under 022 the unfixed writers fail this (0600 weights); 077 shows nothing is loosened.
The umask is process-wide, so the fixture sets it for one test and restores it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for the tiny trainings here (the shared 2-core machine), restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request) -> int:
    """Run the test under ``request.param`` as the process umask; the old one is restored after it."""
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def wrong_modes(root: Path, mask: int) -> dict[str, str]:
    """``{relative path: mode}`` of every file or folder under ``root`` whose mode the umask does not give."""
    wrong = {}
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        want = (0o777 if path.is_dir() else 0o666) & ~mask
        got = stat.S_IMODE(path.lstat().st_mode)
        if got != want:
            wrong[path.relative_to(root).as_posix() or "."] = f"{got:o} (want {want:o})"
    return wrong


def test_run_folder_follows_umask(tmp_path: Path, umask: int) -> None:
    from tests.training.pretrain.helpers import make_blocks, make_tokenizer, tiny_args
    from training.pretrain.loop import train

    out = tmp_path / "run"
    args = tiny_args(out, max_steps=2, checkpoint_every=1, keep_checkpoints=2, per_device_batch_size=4)
    train(args, datasets=make_blocks(n_train=16, n_val=8), tokenizer=make_tokenizer())
    assert (out / "model.safetensors").is_file() and (out / "checkpoints").is_dir()
    assert wrong_modes(out, umask) == {}


def test_finetuned_folder_follows_umask(tmp_path: Path, umask: int) -> None:
    import scratch_gpt_cli
    from tests.training.finetune.fixtures import keyword_rows, make_model_dir, make_tokenizer, write_sms

    rows = keyword_rows(48, seed=0)
    make_model_dir(str(tmp_path / "base"), make_tokenizer([r["text"] for r in rows]))
    write_sms(str(tmp_path / "sms.txt"), rows)
    out = tmp_path / "clf"
    # LoRA (adapter + a copied base_model/) with Trainer checkpoints kept: every writer of a finetuned folder
    rc = scratch_gpt_cli.main([
        "finetune", "classify", str(tmp_path / "base"), "--dataset", str(tmp_path / "sms.txt"),
        "--output-dir", str(out), "--lora", "--lora-rank", "2", "--max-steps", "2", "--batch-size", "8",
        "--eval-strategy", "no", "--save-strategy", "steps", "--save-steps", "1", "--keep-checkpoints",
        "--use-cpu", "--disable-tqdm",
    ])
    assert rc == 0
    assert (out / "base_model" / "model.safetensors").is_file() and (out / "checkpoints").is_dir()
    assert wrong_modes(out, umask) == {}


def test_export_follows_umask(tmp_path: Path, umask: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import hub_export.verify
    from hub_export.export import export_model
    from tests.hub_export.conftest import make_model_dir, write_run_files

    # The self-check loads the staged folder in a fresh interpreter (~20 s here) and writes only into its own
    # temporary folder, never the export; tests/hub_export/test_export.py runs it, so here it is skipped.
    monkeypatch.setattr(hub_export.verify, "verify_export", lambda *a, **k: SimpleNamespace(to_dict=dict))

    src = make_model_dir(tmp_path / "src")
    write_run_files(src)
    os.chmod(src / "loss.png", 0o600)  # a private source file is copied (copy2 keeps modes) and must follow too
    out = tmp_path / "export"
    export_model(src, out, max_shard_size="60KB")
    assert (out / "model.safetensors.index.json").is_file() and (out / "loss.png").is_file()
    assert wrong_modes(out, umask) == {}
