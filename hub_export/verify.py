"""Self-check of an export: load it where ``scratch_gpt`` does not exist and compare with the source.

The check must run in a *fresh* process: once ``scratch_gpt`` is imported, AutoConfig knows
``model_type="scratch_gpt"`` and transformers would use our installed classes instead of the repository's remote
code, proving nothing. The child process installs an import blocker (a ``sys.meta_path`` finder that refuses
``scratch_gpt``, ``training`` and ``hub_export``) before anything else, so the only way it can build the model is
through the files of the export: the Auto classes with ``trust_remote_code=True`` for remote code, the plain
``GPT2LMHeadModel`` for the gpt2 format. It reports the logits on a fixed input, greedy generation ids and a
``pipeline`` result; the parent compares them with the source model it holds.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

BLOCKED_PACKAGES = ("scratch_gpt", "training", "hub_export")
PROMPTS = {"text-generation": "Every effort moves you", "text-classification": "This is a fine example."}
NEW_TOKENS = 6

# The child's program. It receives the path of a JSON spec; it writes logits (safetensors) and a JSON report.
_CHILD = r'''
import importlib.abc, json, sys

BLOCKED = tuple(json.loads(sys.argv[2]))

class _Blocker(importlib.abc.MetaPathFinder):
    """Refuse the project's packages, so only the export's own files can build the model."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the export self-check)", name=name)
        return None

sys.meta_path.insert(0, _Blocker())
blocked_ok = True
for pkg in BLOCKED:
    try:
        __import__(pkg)
        blocked_ok = False
    except ModuleNotFoundError:
        pass

spec = json.load(open(sys.argv[1]))
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

def _rss_mb(field="VmRSS"):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:  # not Linux
        return None

rss_after_imports = _rss_mb()
torch.manual_seed(0)
torch.set_num_threads(spec["threads"])
report = {"blocked_ok": blocked_ok, "transformers_version": transformers.__version__}
folder = spec["folder"]
remote = spec["format"] == "remote-code"
task = spec["task"]
auto = AutoModelForSequenceClassification if task == "text-classification" else AutoModelForCausalLM
model = auto.from_pretrained(folder, trust_remote_code=remote)
model.eval()
cls = type(model)
report["model_class"] = cls.__module__ + "." + cls.__qualname__
report["config_class"] = type(model.config).__module__ + "." + type(model.config).__qualname__
report["model_type"] = model.config.model_type
report["auto_map"] = getattr(model.config, "auto_map", None)
inputs = load_file(spec["inputs"])
with torch.no_grad():
    out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
save_file({"logits": out.logits.float().contiguous()}, spec["logits_out"])
if task == "text-generation" and spec["new_tokens"] >= 1:
    with torch.no_grad():
        ids = model.generate(inputs["input_ids"][:1], attention_mask=inputs["attention_mask"][:1],
                             max_new_tokens=spec["new_tokens"], do_sample=False)
    report["generated_ids"] = ids[0].tolist()
if spec["has_tokenizer"]:
    from transformers import pipeline  # heavy import: only when there is a tokenizer to run it with
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=remote)  # else it asks on stdin
    pipe = pipeline(task, model=model, tokenizer=tok)
    if task == "text-generation":
        res = pipe(spec["prompt"], max_new_tokens=spec["pipeline_new_tokens"], do_sample=False)
        report["pipeline"] = res[0]["generated_text"]
    else:
        res = pipe(spec["prompt"])
        report["pipeline"] = {"label": res[0]["label"], "score": float(res[0]["score"])}
report["peak_rss_mb"] = _rss_mb("VmHWM")  # (ru_maxrss would carry the parent's peak over exec)
report["rss_after_imports_mb"] = rss_after_imports
report["project_modules_loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
json.dump(report, open(spec["report_out"], "w"))
'''


class ExportVerificationError(RuntimeError):
    """The exported folder does not reproduce the source model (nothing is moved into place)."""


@dataclass
class VerificationResult:
    """What the self-check measured."""

    max_abs_diff: float
    tolerance: float
    model_class: str
    generation_match: bool | None
    pipeline_output: Any = None
    pipeline_match: bool | None = None
    seconds: float = 0.0
    report: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "tolerance": self.tolerance,
            "model_class": self.model_class,
            "generation_match": self.generation_match,
            "pipeline_output": self.pipeline_output,
            "pipeline_match": self.pipeline_match,
            "seconds": round(self.seconds, 2),
            "child_peak_rss_mb": self.report.get("peak_rss_mb"),
            "child_rss_after_imports_mb": self.report.get("rss_after_imports_mb"),
        }


def fixed_inputs(vocab_size: int, context: int, pad_token_id: int | None) -> dict[str, Any]:
    """A deterministic 2-row batch (no padding) of token ids that avoids the pad id."""
    import torch

    length = max(2, min(16, context // 2))
    ids = (torch.arange(2 * length).reshape(2, length) * 7919 + 13) % vocab_size
    if pad_token_id is not None:
        ids = torch.where(ids == pad_token_id, (ids + 1) % vocab_size, ids)
    return {"input_ids": ids.long(), "attention_mask": torch.ones_like(ids)}


def _budget(model: Any, tokenizer: Any, inputs: dict[str, Any]) -> tuple[int, int]:
    """New tokens for the generate check and for the pipeline, kept inside the context window."""
    context = model.config.max_position_embeddings
    gen = min(NEW_TOKENS, context - inputs["input_ids"].shape[1])
    pipe = 0
    if tokenizer is not None:
        pipe = min(NEW_TOKENS, context - len(tokenizer(PROMPTS["text-generation"])["input_ids"]))
    return max(gen, 0), max(pipe, 0)


def _source_outputs(
    model: Any, tokenizer: Any, task: str, inputs: dict[str, Any], budget: tuple[int, int]
) -> dict[str, Any]:
    import torch

    result: dict[str, Any] = {}
    if task == "text-generation" and budget[1] < 1:
        tokenizer = None  # the prompt alone fills the context: no pipeline check
    with torch.no_grad():
        result["logits"] = model(**inputs).logits.float()
        if task == "text-generation" and budget[0] >= 1:
            ids = model.generate(
                inputs["input_ids"][:1],
                attention_mask=inputs["attention_mask"][:1],
                max_new_tokens=budget[0],
                do_sample=False,
            )
            result["generated_ids"] = ids[0].tolist()
    if tokenizer is not None:
        from transformers import pipeline

        pipe = pipeline(task, model=model, tokenizer=tokenizer)
        if task == "text-generation":
            res = pipe(PROMPTS[task], max_new_tokens=budget[1], do_sample=False)
            result["pipeline"] = res[0]["generated_text"]
        else:
            res = pipe(PROMPTS[task])
            result["pipeline"] = {"label": res[0]["label"], "score": float(res[0]["score"])}
    return result


def child_env(modules_cache: str) -> dict[str, str]:
    """The environment of the self-check process: offline, its own remote-code cache, quiet."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_MODULES_CACHE=modules_cache,
        TRANSFORMERS_VERBOSITY="error",
        TOKENIZERS_PARALLELISM="false",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env  # PYTHONPATH is kept (torch/transformers may come from it); the import blocker does the isolation


@dataclass
class Reference:
    """The source model's outputs on the fixed checks, computed before the export is written."""

    task: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    budget: tuple[int, int]
    has_tokenizer: bool
    labels: set[str] = field(default_factory=set)
    tolerance: float = 0.0


def logits_tolerance(config: Any, logits: Any) -> float:
    """How far two fp32 kernel paths may put the same model's logits apart, from the arithmetic.

    Each of the K terms of a sum rounds by half an ulp of the running sum; independent roundings add up to about
    ``eps/2 * sqrt(K) * magnitude`` per reduction, chained through the layers and the head. So:
    ``4 * eps32 * sqrt(K) * max|logit| * (layers + 1)``, K the longest reduction of a forward (hidden size, MLP
    width or sequence length); the 4 covers both sides and the largest of many outputs. A wrong weight or an
    off-by-one position moves logits by orders of magnitude more.
    """
    import math

    hidden = config.hidden_size
    width = getattr(config, "intermediate_size", None) or 4 * hidden
    k = max(hidden, width, int(logits.shape[1]) if logits.dim() == 3 else 1)
    magnitude = float(logits.detach().abs().max())
    return 4 * 2.0**-23 * math.sqrt(k) * magnitude * (config.num_hidden_layers + 1)


def compute_reference(model: Any, tokenizer: Any, task: str) -> Reference:
    """Run the self-check's inputs through the source model (logits, greedy generation, pipeline)."""
    cfg = model.config
    inputs = fixed_inputs(cfg.vocab_size, cfg.max_position_embeddings, getattr(cfg, "pad_token_id", None))
    budget = _budget(model, tokenizer, inputs)
    outputs = _source_outputs(model, tokenizer, task, inputs, budget)
    labels = {str(v) for v in (getattr(cfg, "id2label", None) or {}).values()}
    tolerance = logits_tolerance(cfg, outputs["logits"])
    return Reference(task, inputs, outputs, budget, "pipeline" in outputs, labels, tolerance)


def verify_export(
    folder: str | os.PathLike,
    reference: Reference,
    *,
    export_format: str,
    atol: float | None = None,
    timeout: float = 900.0,
) -> VerificationResult:
    """Load ``folder`` in a fresh process that cannot import ``scratch_gpt`` and compare with ``reference``.

    Checks: the project's packages were blocked and never loaded; the class came from the export
    (``transformers_modules.*`` for remote code, transformers' ``GPT2LMHeadModel`` for gpt2 and no ``auto_map``);
    logits agree within ``atol`` (default: the reference's :func:`logits_tolerance`; remote code runs the same
    code on the same weights, so the difference is normally exactly 0); greedy generation and the ``pipeline`` output agree (remote code).
    Raises ``ExportVerificationError`` naming the first failed check.
    """
    import time

    start = time.perf_counter()
    report, logits = run_child(Path(folder), reference, export_format, timeout)
    seconds = time.perf_counter() - start
    check_isolation(report, export_format)
    atol = reference.tolerance if atol is None else atol
    max_diff = compare_logits(logits, reference.outputs["logits"], atol)
    strict = export_format == "remote-code"  # same code and weights: outputs must match exactly
    generation_match = compare_generation(report, reference, strict)
    pipeline_match = compare_pipeline(report, reference, strict)
    logger.info("self-check passed: %s, max |logit diff| %.3g", report["model_class"], max_diff)
    return VerificationResult(
        max_abs_diff=max_diff,
        tolerance=atol,
        model_class=report["model_class"],
        generation_match=generation_match,
        pipeline_output=report.get("pipeline"),
        pipeline_match=pipeline_match,
        seconds=seconds,
        report=report,
    )


def _child_spec(folder: Path, reference: Reference, export_format: str, work: Path) -> dict[str, Any]:
    import torch

    return {
        "folder": str(folder.resolve()),
        "format": export_format,
        "task": reference.task,
        "inputs": str(work / "inputs.safetensors"),
        "logits_out": str(work / "logits.safetensors"),
        "report_out": str(work / "report.json"),
        "has_tokenizer": reference.has_tokenizer,
        "prompt": PROMPTS[reference.task],
        "new_tokens": reference.budget[0],
        "pipeline_new_tokens": reference.budget[1],
        "threads": torch.get_num_threads(),
    }


def run_child(folder: Path, reference: Reference, export_format: str, timeout: float) -> tuple[dict[str, Any], Any]:
    """Run the self-check program on ``folder`` in a fresh process; returns its report and its logits."""
    from safetensors.torch import load_file, save_file

    with tempfile.TemporaryDirectory(prefix="scratch-gpt-verify-") as work:
        work_path = Path(work)
        save_file({k: v.contiguous() for k, v in reference.inputs.items()}, str(work_path / "inputs.safetensors"))
        (work_path / "spec.json").write_text(json.dumps(_child_spec(folder, reference, export_format, work_path)))
        (work_path / "modules").mkdir()
        cmd = [sys.executable, "-c", _CHILD, str(work_path / "spec.json"), json.dumps(BLOCKED_PACKAGES)]
        logger.info("self-check: loading %s in a fresh process without scratch_gpt", folder.name)
        try:
            proc = subprocess.run(
                cmd, cwd=work, stdin=subprocess.DEVNULL,  # never wait for an interactive answer
                env=child_env(str(work_path / "modules")), capture_output=True, text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired as err:
            raise ExportVerificationError(f"self-check did not finish within {timeout:.0f}s") from err
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise ExportVerificationError(
                f"the export does not load without scratch_gpt (self-check exited {proc.returncode}):\n{tail}"
            )
        report = json.loads((work_path / "report.json").read_text())
        return report, load_file(str(work_path / "logits.safetensors"))["logits"]


# The class transformers must build for each plain (no remote code) export format.
PLAIN_CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def check_isolation(report: dict[str, Any], export_format: str) -> None:
    """The child could not import the project, and the model class came from the export itself."""
    if not report["blocked_ok"] or report["project_modules_loaded"]:
        raise ExportVerificationError(
            f"the self-check could import the project packages ({report['project_modules_loaded']}); "
            "the check would prove nothing"
        )
    model_class = report["model_class"]
    if export_format == "remote-code":
        if not model_class.startswith("transformers_modules."):
            raise ExportVerificationError(f"expected the export's remote code to build the model, got {model_class}")
        return
    fmt, plain = export_format, PLAIN_CLASSES[export_format]  # a plain format: transformers' own class
    if not model_class.endswith(f".{plain}") or not model_class.startswith(f"transformers.models.{fmt}"):
        raise ExportVerificationError(f"the {fmt} export loaded as {model_class}, not {plain}")
    if report["auto_map"]:
        raise ExportVerificationError(f"the {fmt} export carries an auto_map (it must need no remote code)")
    if report["model_type"] != fmt:
        raise ExportVerificationError(f"the {fmt} export has model_type {report['model_type']!r}")


def compare_logits(logits: Any, source: Any, atol: float) -> float:
    """The largest absolute logit difference; raises when shapes differ or it exceeds ``atol``."""
    if logits.shape != source.shape:
        raise ExportVerificationError(
            f"logits shape differs: export {tuple(logits.shape)} vs source {tuple(source.shape)}"
        )
    max_diff = float((logits - source).abs().max())
    if not max_diff <= atol:  # also catches NaN
        raise ExportVerificationError(f"logits differ from the source by {max_diff:.3g} (tolerance {atol:g})")
    return max_diff


def compare_generation(report: dict[str, Any], reference: Reference, strict: bool) -> bool | None:
    """Whether greedy generation matches (``None`` when not checked); a mismatch raises when ``strict``."""
    source = reference.outputs.get("generated_ids")
    if source is None:
        return None
    match = report.get("generated_ids") == source
    if strict and not match:
        raise ExportVerificationError(
            f"greedy generation differs: export {report.get('generated_ids')} vs source {source}"
        )
    return match


def compare_pipeline(report: dict[str, Any], reference: Reference, strict: bool) -> bool | None:
    """Whether the ``pipeline`` output matches (``None`` when not checked); a mismatch raises when ``strict``."""
    if "pipeline" not in reference.outputs:
        return None
    source, output, task = reference.outputs["pipeline"], report.get("pipeline"), reference.task
    if task == "text-generation":
        match = output == source
        if not (isinstance(output, str) and output.startswith(PROMPTS[task])):
            raise ExportVerificationError(f"the text-generation pipeline returned {output!r}")
    else:
        match = output["label"] == source["label"] and abs(output["score"] - source["score"]) <= 1e-5
        if output["label"] not in reference.labels:
            raise ExportVerificationError(f"the classification pipeline returned {output!r}")
    if strict and not match:
        raise ExportVerificationError(f"pipeline output differs: export {output!r} vs source {source!r}")
    return match
