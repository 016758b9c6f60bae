"""SIGKILL during an export's write: OUT_DIR is absent, the old complete export, or the new complete one; a rerun
succeeds. The kill is injected through safe_output's SCRATCH_GPT_CRASH_AT hook points."""

from __future__ import annotations

import hashlib
import shutil
import signal
from pathlib import Path

import pytest

from hub_export.export import export_model
from scratch_gpt import run_folder
from scratch_gpt.safe_output import CRASH_ENV

from .conftest import REPO_ROOT, base_env, run_python

_EXPORT = r"""
import sys
from hub_export.export import export_model
export_model(sys.argv[1], sys.argv[2], overwrite=sys.argv[3] == "1")
"""


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _killed_export(tmp_path: Path, src: Path, out: Path, point: str, overwrite: bool) -> None:
    env = base_env(tmp_path)
    env[CRASH_ENV] = point
    proc = run_python(_EXPORT, str(src), str(out), "1" if overwrite else "0", env=env, cwd=REPO_ROOT)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".staging-" in p.name or ".old-" in p.name]


@pytest.mark.parametrize("point", ["export-weights-written", "before-fsync"])
def test_kill_while_writing_leaves_nothing_and_a_plain_rerun_succeeds(run_dir, tmp_path, point):
    out = tmp_path / "export"
    _killed_export(tmp_path, run_dir, out, point, overwrite=False)
    assert not out.exists()
    assert _leftovers(tmp_path)  # the killed run's staging folder: not the output, and cleaned by the next run
    result = export_model(run_dir, out)  # no --overwrite needed: nothing complete was left
    assert run_folder.has_weights(out) and result.verification["max_abs_diff"] == 0.0
    assert _leftovers(tmp_path) == []


def test_kill_before_swap_keeps_the_old_export(run_dir, lm_export, tmp_path):
    out = tmp_path / "export"
    shutil.copytree(lm_export.out_dir, out)
    before = _tree(out)
    _killed_export(tmp_path, run_dir, out, "before-swap", overwrite=True)
    assert _tree(out) == before  # old and complete, byte for byte


def test_kill_after_swap_leaves_the_new_complete_export(run_dir, lm_export, tmp_path):
    out = tmp_path / "export"
    shutil.copytree(lm_export.out_dir, out)  # the old export is sharded; the new one (default shard size) is not
    _killed_export(tmp_path, run_dir, out, "after-swap", overwrite=True)
    files = set(_tree(out))
    assert run_folder.WEIGHTS_FILES[0] in files and run_folder.WEIGHTS_FILES[1] not in files
    assert {run_folder.CONFIG_FILE, run_folder.MODEL_CARD_FILE, run_folder.LOSS_PLOT_FILE} <= files
    assert _leftovers(tmp_path)  # the old export, at the staging name, was not yet deleted
    export_model(run_dir, out, overwrite=True)  # the next run removes the dead run's leftovers
    assert _leftovers(tmp_path) == []
