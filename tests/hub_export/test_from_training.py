"""End to end through the run-folder contract: a real (tiny) pretraining run on a dataset inside a folder named
private_medical_notes, exported: the card shows the run's last validation loss, perplexity and loss plot, and the
folder's name appears in no exported file."""

from __future__ import annotations

import math

from hub_export.export import export_model
from scratch_gpt import run_folder

SECRET = "private_medical_notes"
WORDS = "patient reports mild pain fever cough resolved follow up in two weeks blood pressure normal".split()


def _notes(path):
    path.parent.mkdir(parents=True)
    lines = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(20)) for i in range(400)]
    path.write_text("\n\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_pretraining_run_exports_its_metrics_and_no_private_path(tmp_path, monkeypatch):
    from training.pretrain.arguments import resolve_arguments
    from training.pretrain.loop import train

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    dataset = _notes(tmp_path / SECRET / "notes.txt")
    args = resolve_arguments(overrides=dict(
        dataset=str(dataset), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, block_size=32,
        vocab_size=300, per_device_batch_size=8, learning_rate=3e-3, warmup_steps=2, max_steps=6, eval_every=3,
        eval_batches=2, checkpoint_every=0, log_every=1, num_samples=0, output_dir=str(tmp_path / "run"), seed=0,
        max_time=None,
    ))
    output = train(args)
    assert SECRET in run_folder.file(output.run_dir, run_folder.TRAINING_ARGS_FILE).read_text()  # recorded locally

    result = export_model(output.run_dir, tmp_path / "export")
    out = result.out_dir
    assert [f for f in result.files if SECRET.encode() in (out / f).read_bytes()] == []
    card = (out / run_folder.MODEL_CARD_FILE).read_text()
    last = run_folder.last_eval_metrics(output.run_dir)
    final = run_folder.load_results(output.run_dir)["eval"]
    assert f"| loss | {final['eval_loss']!r} |" in card and final["eval_loss"] == last["eval_loss"]
    assert f"| perplexity | {final['eval_perplexity']!r} |" in card
    assert math.isclose(final["eval_perplexity"], math.exp(final["eval_loss"]), rel_tol=1e-6)
    assert f"![loss curve]({run_folder.LOSS_PLOT_FILE})" in card and run_folder.LOSS_PLOT_FILE in result.files
    assert "- Dataset: `notes.txt`" in card
