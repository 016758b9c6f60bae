"""scratch_gpt.safe_output and scratch_gpt.run_folder: the two stdlib foundations every command writes through."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scratch_gpt import run_folder
from scratch_gpt.safe_output import check_no_overlap, clean_stale, staged_output


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
