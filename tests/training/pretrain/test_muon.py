"""`--optimizer muon`: which parameter goes to Muon and which to AdamW, the per-group peak learning rates, an
exact resume after SIGKILL, two DDP processes equal to one, the one-line refusals; and `--recipe modern`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from scratch_gpt import run_folder
from tests.training.pretrain.helpers import (
    REPO_ROOT, child_env, kill_hanging_child, launch_two_processes, make_blocks, make_tokenizer, tiny_args,
)
from training.pretrain.arguments import RECIPES, resolve_arguments
from training.pretrain.loop import train
from training.pretrain.optimizers import build_optimizers, hidden_matrices, muon_class, set_learning_rates
from training.pretrain.setup import build_model, check_optimizer_launch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _names(model, params) -> set[str]:
    ids = {id(p) for p in params}
    return {name for name, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
@pytest.mark.parametrize("tied", [True, False])
def test_muon_takes_the_block_matrices_and_adamw_the_rest(tmp_path, architecture, tied):
    args = tiny_args(tmp_path, optimizer="muon", architecture=architecture)
    model = build_model(args, make_tokenizer())
    if not tied:
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    adamw, muon = build_optimizers(args, model, "cpu")
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    matrices = {n for n, p in model.named_parameters() if p.ndim == 2 and n.startswith("transformer.h.")}
    assert _names(model, muon.param_groups[0]["params"]) == _names(model, hidden_matrices(model)) == matrices
    assert all(".attn." in n or ".mlp." in n for n in matrices) and len(matrices) >= 4 * args.num_hidden_layers
    decay, no_decay = (set(_names(model, g["params"])) for g in adamw.param_groups)
    head = set() if tied else {"lm_head.weight"}
    assert decay == head  # the head is a matrix outside the blocks; the embeddings are not decayed
    assert "transformer.wte.weight" in no_decay and not no_decay & matrices
    everything = {n for n, _ in model.named_parameters()} - ({"lm_head.weight"} if tied else set())
    assert matrices | decay | no_decay == everything and not matrices & (decay | no_decay)
    assert all(p.ndim < 2 for n, p in model.named_parameters() if n in no_decay and "wte" not in n and "wpe" not in n)


def test_each_group_has_its_peak_and_one_schedule_scales_both(tmp_path):
    args = tiny_args(tmp_path, optimizer="muon", learning_rate=1e-3, muon_lr=0.05, weight_decay=0.2)
    adamw, muon = build_optimizers(args, build_model(args, make_tokenizer()), "cpu")
    group = muon.param_groups[0]
    assert (group["peak_lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (0.05, 0.95, 0.2, True)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.2, 0.0] and adamw.defaults["fused"]
    set_learning_rates([adamw, muon], 0.5)
    assert [g["lr"] for g in adamw.param_groups] == [5e-4, 5e-4] and group["lr"] == 0.025
    plain = build_optimizers(tiny_args(tmp_path, learning_rate=1e-3), build_model(args, make_tokenizer()), "cpu")
    assert len(plain) == 1 and [g["peak_lr"] for g in plain[0].param_groups] == [1e-3, 1e-3]


def test_muon_run_lowers_the_loss_and_records_its_optimizer(tmp_path):
    out = tmp_path / "muon"
    train(tiny_args(out, optimizer="muon", max_steps=16, checkpoint_every=8, eval_every=8), datasets=make_blocks(),
          tokenizer=make_tokenizer())
    history = run_folder.load_log_history(out)
    evals = [r["eval_loss"] for r in history if "eval_loss" in r]
    assert evals[1] < evals[0] < 5.7  # below the uniform guess log(300) = 5.70
    args = tiny_args(out, optimizer="muon")
    logged = [r for r in history if "loss" in r]
    assert logged and all(  # Muon's learning rate beside AdamW's: each group's peak times the one schedule
        r["muon_learning_rate"] == pytest.approx(r["learning_rate"] * args.muon_lr / args.learning_rate) for r in logged
    )
    checkpoint = out / "checkpoints" / run_folder.checkpoint_name(16)
    assert (checkpoint / "optimizer.bin").is_file() and (checkpoint / "optimizer_1.bin").is_file()
    assert run_folder.load_trainer_state(checkpoint)["optimizer"] == "muon"
    with pytest.raises(ValueError, match="trained with --optimizer muon"):
        train(tiny_args(out, max_steps=20, resume=True), datasets=make_blocks(), tokenizer=make_tokenizer())


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model.safetensors"))


def _child(out, *extra: str) -> None:
    cmd = [sys.executable, "-m", "tests.training.pretrain.helpers", "--out", str(out), *extra]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_sigkill_then_resume_with_muon_equals_uninterrupted_exactly(tmp_path):
    """Optimizer state (Muon's momentum, AdamW's moments) and the best model survive a real crash."""
    common = ("--steps", "10", "--checkpoint-every", "3", "--optimizer", "muon", "--eval-every", "2")
    full, part = tmp_path / "full", tmp_path / "part"
    _child(full, *common)
    # killed after step 8: its best model is saved, the newest checkpoint (6) does not know it yet
    killed = kill_hanging_child(part, 10, 3, 8, "--optimizer", "muon", "--eval-every", "2", timeout=240)
    assert killed == -signal.SIGKILL
    assert (part / "best" / run_folder.checkpoint_name(8)).is_dir()
    assert run_folder.load_trainer_state(part / "checkpoints" / run_folder.checkpoint_name(6))["best_step"] == 6
    _child(part, *common, "--resume")
    a, b = _weights(full), _weights(part)
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0
    state_a, state_b = (json.loads((d / "trainer_state.json").read_text()) for d in (full, part))
    losses = [[(r["step"], r.get("loss"), r.get("eval_loss")) for r in s["log_history"]] for s in (state_a, state_b)]
    assert losses[0] == losses[1]
    best = [(s["best_metric"], s["best_global_step"]) for s in (state_a, state_b)]
    assert best[0] == best[1]
    assert sorted(p.name for p in (part / "best").iterdir()) == [run_folder.checkpoint_name(best[1][1])]


def test_two_processes_with_muon_match_one_with_the_same_global_batch(tmp_path):
    """DDP over gloo: the gradients are all-reduced before Muon orthogonalises them, so both ranks step alike."""
    steps = 5
    one = train(tiny_args(tmp_path / "one", max_steps=steps, per_device_batch_size=8, optimizer="muon"),
                datasets=make_blocks(), tokenizer=make_tokenizer()).run_dir
    two = tmp_path / "two"
    proc = launch_two_processes(two, steps, "--optimizer", "muon", timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert run_folder.load_results(two)["train"]["num_processes"] == 2
    a, b = _weights(one), _weights(two)
    # The gradients differ by fp32 rounding (two half-batch means, all-reduced), and torch's Newton-Schulz runs
    # in bf16: a rounding flip moves an update entry (at most ~1.5, the iteration's singular values) by up to
    # 2^-8 of it, times the shape-adjusted rate (0.02 x sqrt(128 / 32) for the MLP matrices) per step. A DDP
    # fault (gradients not averaged, ranks apart) moves whole updates: 0.02 and more per step.
    atol = steps * 0.02 * 2 * 1.5 * 2**-8
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=atol, rtol=0, msg=key)
    losses = [[r["loss"] for r in run_folder.load_log_history(d) if "loss" in r] for d in (one, two)]
    assert losses[1] == pytest.approx(losses[0], abs=1e-3) and len(losses[0]) == steps


def test_without_torch_muon_one_line_names_the_version(monkeypatch, tmp_path):
    monkeypatch.delattr(torch.optim, "Muon")
    with pytest.raises(ValueError, match=r"--optimizer muon needs torch >= 2\.9 \(torch.optim.Muon\); this is torch"):
        muon_class()
    args = tiny_args(tmp_path, optimizer="muon")
    with pytest.raises(ValueError, match="needs torch >= 2.9"):
        build_optimizers(args, build_model(args, make_tokenizer()), "cpu")


def test_sharded_and_fp16_launches_are_refused_with_muon(tmp_path):
    from accelerate.utils import DistributedType

    fsdp = SimpleNamespace(distributed_type=DistributedType.FSDP)
    with pytest.raises(ValueError, match="--optimizer muon needs whole weight matrices.*configs/ddp.yaml"):
        check_optimizer_launch(tiny_args(tmp_path, optimizer="muon"), fsdp)
    check_optimizer_launch(tiny_args(tmp_path), fsdp)  # AdamW shards fine
    fp16 = SimpleNamespace(distributed_type=DistributedType.NO, mixed_precision="fp16")
    with pytest.raises(ValueError, match="does not train under fp16 loss scaling; use --mixed-precision bf16"):
        check_optimizer_launch(tiny_args(tmp_path, optimizer="muon"), fp16)


def test_modern_recipe_sets_muon_and_the_switches_and_flags_win(tmp_path):
    args = resolve_arguments(overrides={"recipe": "modern"})
    assert {k: getattr(args, k) for k in RECIPES["modern"]} == RECIPES["modern"]
    config = build_model(args, make_tokenizer()).config
    # what won in docs/quality.md: Muon, AdamW's higher peak for the rest, zero-init; GPT-2's MLP and no soft-cap
    assert (config.hidden_act, config.zero_init_output_projections, config.final_logit_softcapping) == (
        "gelu_pytorch_tanh", True, None
    )
    assert args.learning_rate == 6e-3 != resolve_arguments().learning_rate  # the recipe's peak beats the preset's
    flags = resolve_arguments(overrides={"recipe": "modern", "optimizer": "adamw", "learning_rate": 1e-3})
    assert (flags.optimizer, flags.learning_rate) == ("adamw", 1e-3)
    path = tmp_path / "run.yaml"
    path.write_text("recipe: modern\nmuon_lr: 0.01\n")
    from_file = resolve_arguments(config_file=path, overrides={"preset": "small"})
    assert (from_file.optimizer, from_file.muon_lr, from_file.hidden_size) == ("muon", 0.01, 256)
    classic = build_model(resolve_arguments(), make_tokenizer()).config
    assert (classic.hidden_act, classic.zero_init_output_projections, classic.final_logit_softcapping) == (
        "gelu_pytorch_tanh", False, None
    )
    with pytest.raises(ValueError, match="--muon-lr is out of range"):
        resolve_arguments(overrides={"muon_lr": 0})
