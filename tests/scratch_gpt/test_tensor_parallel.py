"""``base_model_tp_plan`` works: ``from_pretrained(..., tp_plan="auto")`` on two CPU processes (gloo) shards
the MLP and attention projections and gives the logits of the unsharded model."""

import json
import os
import subprocess
import sys

import torch

from scratch_gpt import ScratchGPTForCausalLM
from tests.conftest import make_tiny_config
from tests.scratch_gpt.helpers import assert_logits_close

WORKER = r"""
import json, os, sys, torch
import scratch_gpt
from transformers import AutoModelForCausalLM
folder, out = sys.argv[1:3]
model = AutoModelForCausalLM.from_pretrained(folder, tp_plan="auto").eval()
with torch.no_grad():
    logits = model(torch.tensor(json.load(open(os.path.join(folder, "ids.json"))))).logits
block = model.transformer.h[0]
shapes = {name: list(getattr(block, name.split(".")[0]).__getattr__(name.split(".")[1]).weight.to_local().shape)
          for name in ("mlp.c_fc", "mlp.c_proj", "attn.c_attn", "attn.c_proj")}
if int(os.environ["RANK"]) == 0:
    torch.save({"logits": logits, "shapes": shapes}, out)
"""


def test_tp_plan_auto_on_two_processes_equals_the_unsharded_model(tmp_path):
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(make_tiny_config()).eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    ids = torch.randint(2, 320, (2, 12))
    (folder / "ids.json").write_text(json.dumps(ids.tolist()))
    (tmp_path / "worker.py").write_text(WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [str(tmp_path / "worker.py"), str(folder), str(tmp_path / "out.pt")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = torch.load(tmp_path / "out.pt")
    # colwise / rowwise: half of the MLP per rank; the fused qkv and its output projection are gathered/split
    assert result["shapes"]["mlp.c_fc"] == [64, 32] and result["shapes"]["mlp.c_proj"] == [32, 64]
    assert result["shapes"]["attn.c_attn"] == [48, 32] and result["shapes"]["attn.c_proj"] == [32, 16]
    with torch.no_grad():
        assert_logits_close(result["logits"], model(ids).logits, model.config)  # row-wise halves are all-reduced
