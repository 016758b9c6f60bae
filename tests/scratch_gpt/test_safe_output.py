"""scratch_gpt.safe_output and scratch_gpt.run_folder: the two stdlib foundations every command writes through."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from scratch_gpt import run_folder, safe_output
from scratch_gpt.safe_output import apply_umask, check_no_overlap, clean_stale, current_umask, staged_output


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_new_result_appears_whole(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with staged_output(target) as stage:
        (stage / "a.txt").write_text("1")
        assert not target.exists()  # nothing at the target while the result is being written
    assert _tree(target) == {"a.txt": "1"}
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no staging leftovers


def test_existing_target_needs_overwrite_and_is_untouched(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="--overwrite"):
        with staged_output(target) as stage:
            (stage / "new.txt").write_text("new")
    assert _tree(target) == {"old.txt": "old"}


def test_failure_keeps_the_old_result(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_output(target, overwrite=True) as stage:
            (stage / "new.txt").write_text("half")
            raise RuntimeError("crash while writing")
    assert _tree(target) == {"old.txt": "old"}
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_overwrite_replaces_and_carries(tmp_path: Path) -> None:
    target = tmp_path / "out"
    (target / "checkpoints").mkdir(parents=True)
    (target / "checkpoints" / "c").write_text("ck")
    (target / "model").write_text("old")
    with staged_output(target, overwrite=True, carry=["checkpoints"]) as stage:
        (stage / "model").write_text("new")
    assert _tree(target) == {"checkpoints/c": "ck", "model": "new"}


def test_single_file_output(tmp_path: Path) -> None:
    target = tmp_path / "tok.json"
    target.write_text("old")
    with staged_output(target, overwrite=True, is_dir=False) as stage:
        stage.write_text("new")
    assert target.read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["tok.json"]


def test_overwriting_a_link_replaces_the_link_not_what_it_points_to(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "keep.txt").write_text("keep")
    (tmp_path / "link").symlink_to(real)
    with staged_output(tmp_path / "link", overwrite=True) as stage:
        (stage / "new.txt").write_text("new")
    assert not (tmp_path / "link").is_symlink()
    assert _tree(tmp_path / "link") == {"new.txt": "new"}
    assert _tree(real) == {"keep.txt": "keep"}



def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture(params=[0o022, 0o077, 0o027], ids=["umask022", "umask077", "umask027"])
def umask(request) -> int:
    """The process umask set to ``request.param`` for one test, the old one restored after it."""
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_published_modes_follow_the_umask(tmp_path: Path, umask: int) -> None:
    # writers that pick their own modes: a private weights file (transformers 5.25), a world-readable copy, a
    # private folder, an executable script; a link to a private file outside must be left alone
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    outside.chmod(0o600)
    target = tmp_path / "out"
    with staged_output(target) as stage:
        (stage / "model.safetensors").write_bytes(b"w")
        (stage / "model.safetensors").chmod(0o600)
        (stage / "copied.json").write_text("{}")
        (stage / "copied.json").chmod(0o644)
        (stage / "sub").mkdir(mode=0o700)
        (stage / "sub" / "run.sh").write_text("#!/bin/sh\n")
        (stage / "sub" / "run.sh").chmod(0o700)
        (stage / "link").symlink_to(outside)
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    assert _mode(target / "model.safetensors") == _mode(target / "copied.json") == file_mode
    assert _mode(target) == _mode(target / "sub") == dir_mode
    assert _mode(target / "sub" / "run.sh") == dir_mode  # executable stays executable, as far as the umask allows
    assert _mode(outside) == 0o600 and (target / "link").is_symlink()


def test_single_file_and_carried_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    file_target = tmp_path / "tok.json"
    with staged_output(file_target, is_dir=False) as stage:
        stage.write_text("new")
        stage.chmod(0o600)
    assert _mode(file_target) == 0o666 & ~umask
    target = tmp_path / "run"
    (target / "checkpoints").mkdir(parents=True)
    (target / "checkpoints" / "model.safetensors").write_text("ck")
    (target / "checkpoints" / "model.safetensors").chmod(0o600)
    with staged_output(target, overwrite=True, carry=["checkpoints"]) as stage:
        (stage / "model.safetensors").write_text("new")
    assert _mode(target / "checkpoints" / "model.safetensors") == 0o666 & ~umask


def test_apply_umask_takes_an_explicit_mask(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    apply_umask(tmp_path, 0o002)
    assert _mode(tmp_path / "f") == 0o664 and _mode(tmp_path) == 0o775


def test_current_umask_reads_without_changing_it(umask: int) -> None:
    assert current_umask() == umask
    assert current_umask() == umask  # reading did not change it
    # where /proc is missing the fallback swaps the mask and restores it: same answer, same mask after
    code = ("import builtins, os; real = builtins.open\n"
            "def no_proc(f, *a, **k):\n"
            "    if str(f).startswith('/proc/'): raise FileNotFoundError(f)\n"
            "    return real(f, *a, **k)\n"
            "builtins.open = no_proc\n"
            "import importlib.util as u, sys; spec = u.spec_from_file_location('so', sys.argv[1])\n"
            "mod = u.module_from_spec(spec); spec.loader.exec_module(mod)\n"  # stdlib only: no torch import
            "print(oct(mod.current_umask()), oct(mod.current_umask()))")
    module = Path(safe_output.__file__)
    out = subprocess.run([sys.executable, "-c", code, str(module)], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [oct(umask), oct(umask)]

@pytest.mark.parametrize(("output", "inputs"), [("data", ["data"]), ("data/out", ["data"]), (".", ["data"])])
def test_output_overlapping_an_input_is_refused(tmp_path: Path, output: str, inputs: list[str]) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "corpus.txt").write_text("precious")
    with pytest.raises(ValueError, match="destroy the input"):
        check_no_overlap(tmp_path / output, [tmp_path / name for name in inputs])
    check_no_overlap(tmp_path / "elsewhere", [tmp_path / "data", "owner/hub-id", None])  # no overlap: no error


def test_leftovers_of_a_dead_process_are_cleaned(tmp_path: Path) -> None:
    dead = tmp_path / ".out.staging-999999999"
    dead.mkdir()
    alive = tmp_path / f".out.staging-{os.getpid()}"
    alive.mkdir()
    unrelated = tmp_path / ".out.notes-1"
    unrelated.mkdir()
    clean_stale(tmp_path / "out")
    assert not dead.exists() and alive.exists() and unrelated.exists()


def test_results_merge_like_trainer_save_metrics(tmp_path: Path) -> None:
    run_folder.save_results(tmp_path, "eval", {"eval_loss": 2.0})
    run_folder.save_results(tmp_path, "eval", {run_folder.LM_EVAL_KEY: {"task": {"acc": 0.5}}})
    run_folder.save_results(tmp_path, "test", {"test_accuracy": 0.75})
    results = run_folder.load_results(tmp_path)
    assert results["eval"] == {"eval_loss": 2.0, "lm_eval": {"task": {"acc": 0.5}}}
    assert run_folder.read_json(tmp_path, run_folder.ALL_RESULTS_FILE)["test_accuracy"] == 0.75
    with pytest.raises(ValueError, match="unknown results split"):
        run_folder.save_results(tmp_path, "dev", {})


def test_checkpoints_count_only_when_complete(tmp_path: Path) -> None:
    root = run_folder.checkpoints_dir(tmp_path)
    for step, complete in ((100, True), (200, False), (50, True)):
        path = root / run_folder.checkpoint_name(step)
        path.mkdir(parents=True)
        if complete:
            (path / run_folder.COMPLETE_MARKER).write_text("")
    (root / (run_folder.checkpoint_name(300) + ".tmp")).mkdir()
    assert [run_folder.checkpoint_step(p) for p in run_folder.list_checkpoints(tmp_path)] == [50, 100]
    assert run_folder.checkpoint_step(run_folder.latest_checkpoint(tmp_path)) == 100


def test_corrupt_record_names_the_file(tmp_path: Path) -> None:
    (tmp_path / run_folder.TRAINER_STATE_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=run_folder.TRAINER_STATE_FILE):
        run_folder.load_log_history(tmp_path)
