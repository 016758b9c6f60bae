"""FSDP2 through Accelerate on CPU (gloo, 2 processes), launched with the shipped ``configs/fsdp.yaml``.

One uninterrupted 2-process FSDP run (20 steps, a sharded checkpoint every 5) is shared by the tests: its loss
curve against one process with the same global batch, its final folder through ``from_pretrained`` and
``generate``, and its weights against a run SIGKILLed after step 12 and resumed. The training child is
``tests.training.pretrain.helpers`` (the DDP tests' child) under ``accelerate launch``.

Tolerance of the loss curve: both runs see the same 8 blocks per step in the same order (Accelerate's shard
of a global batch of 8 is 4 + 4), so they differ only in reduction order: the mean loss and the gradient of
8 rows are summed as 4 + 4 across processes (FSDP's reduce-scatter) instead of over 8 in one tensor. Each such
float32 reduction differs by a few ulps (~1e-7 relative); AdamW's normalised update carries that into the
weights (measured: <= 8e-6 absolute after 20 steps at lr 3e-3), and the losses, ~5.0, differ by 1-2 float32
ulps (measured <= 1.8e-7 relative). ``rtol=1e-5`` leaves a 50x margin over that, and a real difference (other
blocks in a step, or the gradient of one process's half only) changes the loss at its first or second step.
A resumed run replays the same arithmetic in the same order, so its weights are compared to 1e-6 (measured: 0).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from scratch_gpt import run_folder
from tests.training.pretrain.helpers import REPO_ROOT, child_env, make_blocks, make_tokenizer, tiny_args
from training.pretrain.loop import train

STEPS, EVERY, KILL_AFTER = 20, 5, 12
CONFIG = REPO_ROOT / "configs" / "fsdp.yaml"


def _free_port() -> int:
    """A free local port, so that concurrent test runs on one machine do not meet on 29500."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(out: Path, processes: int, *extra: str) -> list[str]:
    """``accelerate launch --config_file configs/fsdp.yaml`` of the tiny training child into ``out``."""
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG),
        "--num_processes", str(processes), "--main_process_port", str(_free_port()),
        "-m", "tests.training.pretrain.helpers", "--out", str(out), "--steps", str(STEPS),
        "--batch", str(8 // processes), "--checkpoint-every", str(EVERY), *extra,
    ]


def _run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _kill_when_hanging(cmd: list[str], out: Path, timeout: float = 300) -> None:
    """Run ``cmd`` (in its own process group) until the children hang after a step, then SIGKILL them all."""
    child = subprocess.Popen(cmd, cwd=REPO_ROOT, env=child_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not (out / "HANGING").exists():
            if child.poll() is not None:
                pytest.fail(f"training exited early ({child.returncode}): {child.stderr.read().decode()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("training did not reach the kill point in time")
            time.sleep(0.2)
        time.sleep(1.0)  # both processes reach the hang (the checkpoint before it is complete on disk)
    finally:
        # The launcher and both training processes, as a crash would. torchrun may start the workers in a
        # session of their own, out of the launcher's process group: kill every descendant found before it, or
        # the hanging workers outlive the test (half a GB each).
        descendants = psutil.Process(child.pid).children(recursive=True)
        os.killpg(child.pid, signal.SIGKILL)
        for process in descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        child.wait(timeout=60)
        psutil.wait_procs(descendants, timeout=60)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model.safetensors"))


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in run_folder.load_log_history(run_dir) if "loss" in r]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> Path:
    """An uninterrupted 2-process FSDP2 run with sharded checkpoints."""
    out = tmp_path_factory.mktemp("fsdp") / "full"
    _run(_launch(out, 2))
    return out


def test_fsdp_two_processes_match_one(fsdp_run, tmp_path):
    torch.set_num_threads(1)
    one = train(tiny_args(tmp_path / "one", max_steps=STEPS, per_device_batch_size=8),
                datasets=make_blocks(), tokenizer=make_tokenizer()).run_dir
    results = run_folder.load_results(fsdp_run)["train"]
    assert results["num_processes"] == 2
    assert results["num_input_tokens_seen"] == run_folder.load_results(one)["train"]["num_input_tokens_seen"]
    # really sharded: sharded checkpoints (one torch.distributed.checkpoint file per process), no full model
    ckpt = run_folder.latest_checkpoint(fsdp_run)
    assert sorted(p.name for p in (ckpt / "pytorch_model_fsdp_0").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not (ckpt / "model.safetensors").exists()
    assert len(_losses(fsdp_run)) == STEPS
    assert _losses(fsdp_run) == pytest.approx(_losses(one), rel=1e-5)
    a, b = _weights(one), _weights(fsdp_run)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=1e-4, msg=key)


def test_fsdp_final_folder_loads_and_generates(fsdp_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import scratch_gpt  # noqa: F401 (registers the Auto classes)

    model = AutoModelForCausalLM.from_pretrained(fsdp_run)
    tokenizer = AutoTokenizer.from_pretrained(fsdp_run)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # still tied
    ids = tokenizer("def f_1(x):", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 8)


def test_fsdp_sigkill_then_resume_equals_uninterrupted(fsdp_run, tmp_path):
    part = tmp_path / "part"
    _kill_when_hanging(_launch(part, 2, "--hang-after", str(KILL_AFTER)), part)
    assert [run_folder.checkpoint_step(p) for p in run_folder.list_checkpoints(part)] == [5, 10]
    assert not (part / "model.safetensors").exists()
    (part / "HANGING").unlink()
    _run(_launch(part, 2, "--resume"))
    a, b = _weights(fsdp_run), _weights(part)
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff <= 1e-6, diff
    assert _losses(part) == pytest.approx(_losses(fsdp_run), abs=1e-6)


def test_fsdp_checkpoint_resumes_with_one_process_or_refuses(fsdp_run, tmp_path):
    """Two-process FSDP shards: a plain one-process --resume refuses in one line; one FSDP process continues."""
    part = tmp_path / "part"
    shutil.copytree(fsdp_run, part)
    for path in run_folder.list_checkpoints(part)[1:]:  # continue from step 5
        shutil.rmtree(path)
    with pytest.raises(ValueError, match=r"holds FSDP shards .*configs/fsdp.yaml") as refused:
        train(tiny_args(part, max_steps=STEPS, checkpoint_every=EVERY, resume=True),
              datasets=make_blocks(), tokenizer=make_tokenizer())
    assert "\n" not in str(refused.value)
    _run(_launch(part, 1, "--resume"))
    assert run_folder.load_results(part)["train"]["num_processes"] == 1
    assert _losses(part) == pytest.approx(_losses(fsdp_run), rel=1e-5)


@pytest.mark.parametrize("name", ["ddp", "fsdp", "multinode"])
def test_shipped_configs_load_in_accelerate(name):
    """configs/*.yaml are what `accelerate launch --config_file` reads (ddp and fsdp also run above and in
    test_processes.py; multinode needs a second machine, so only its contents are checked)."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    config = load_config_from_file(str(REPO_ROOT / "configs" / f"{name}.yaml"))
    assert config.mixed_precision == "no" and not config.use_cpu  # torchrun launcher: 2 processes on CPU too
    if name == "ddp":
        assert config.distributed_type == DistributedType.MULTI_GPU
        return
    assert config.distributed_type == DistributedType.FSDP
    fsdp = config.fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert "fsdp_transformer_layer_cls_to_wrap" not in fsdp  # the model's _no_split_modules decide
    if name == "multinode":
        assert config.num_machines == 2 and config.main_process_ip and config.main_process_port


def test_gpu_check_dry_run(tmp_path):
    """`benchmarks/gpu_check.sh --dry-run`: every step of the GPU check, CPU-sized, into one JSON document."""
    import json

    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                          cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["dry_run"] is True
    assert report["train"]["result"]["tokens_per_s"] > 0 and "mfu" in report["train"]["result"]
    assert report["quality"]["result"]["corpora"]["stdlib"]["summary"]["mean_nats_per_char"]
    fsdp = report["fsdp"]["result"]
    assert fsdp["global_step"] == 2 and fsdp["sharded_checkpoints"] and fsdp["final_folder_generates"]
