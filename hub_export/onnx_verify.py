"""The self-check of an ONNX export: run the written files in onnxruntime and compare with the source model.

- **fp32** (``onnx/model.onnx``): the prompt's logits without past keys, and the last tokens' logits fed with
  the past keys onnxruntime itself returned for the first tokens, each within
  ``max(1e-4, logits_tolerance)`` of ScratchGPT's (:func:`hub_export.verify.logits_tolerance`: what two fp32
  kernel paths may differ by from the arithmetic, under 1e-4 for small models); and ``GREEDY_TOKENS`` greedy tokens
  decoded step by step with the KV cache equal ScratchGPT's greedy tokens with its own cache.
- **int8** (``onnx/model_quantized.onnx``): quantized weights move logits by far more than rounding, so the rule
  is on decisions: fed the fp32 greedy continuation (teacher forcing, so one flip does not derail the rest), the
  int8 model's next token equals fp32's at >= ``INT8_MIN_AGREEMENT`` of the ``GREEDY_TOKENS`` positions. Its
  free-running greedy agreement and its size relative to fp32 are reported too.

Everything runs in this process: the ONNX files hold the whole computation (no Python code of ours is loaded
by onnxruntime), so isolating it would prove nothing more.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .verify import ExportVerificationError, logits_tolerance

logger = logging.getLogger(__name__)

GREEDY_TOKENS = 32
INT8_MIN_AGREEMENT = 0.9
PROMPT = "Every effort moves you"


class OnnxDecoderSession:
    """An onnxruntime session over an exported decoder, fed and read by transformers.js's names."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.past = [i for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]

    def empty_past(self, batch: int) -> list[np.ndarray]:
        """Zero-length past keys/values, shaped from the input metadata as transformers.js does."""
        return [np.zeros((batch, i.shape[1], 0, i.shape[3]), dtype=np.float32) for i in self.past]

    def step(self, ids: np.ndarray, past: list[np.ndarray], start: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """One forward of ``ids`` after ``start`` cached positions; returns the logits and the new cache."""
        batch, seq = ids.shape
        feeds = {
            "input_ids": ids.astype(np.int64),
            "attention_mask": np.ones((batch, start + seq), dtype=np.int64),
            "position_ids": np.arange(start, start + seq, dtype=np.int64)[None].repeat(batch, 0),
            **{meta.name: value for meta, value in zip(self.past, past)},
        }
        logits, *present = self.session.run(None, feeds)
        return logits, present

    def greedy(self, prompt: list[int], steps: int) -> list[int]:
        """``steps`` greedy tokens after ``prompt``, decoding one token at a time with the KV cache."""
        logits, past = self.step(np.array([prompt]), self.empty_past(1), 0)
        tokens = [int(logits[0, -1].argmax())]
        for _ in range(steps - 1):
            logits, past = self.step(np.array([[tokens[-1]]]), past, len(prompt) + len(tokens) - 1)
            tokens.append(int(logits[0, -1].argmax()))
        return tokens


def source_greedy(model: Any, prompt: list[int], steps: int) -> list[int]:
    """ScratchGPT's ``steps`` greedy tokens after ``prompt`` with its own KV cache (no stopping at EOS)."""
    tokens, cache, ids = [], None, torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(steps):
            out = model(input_ids=ids, cache=cache, use_cache=True)
            cache = out.cache
            tokens.append(int(out.logits[0, -1].argmax()))
            ids = torch.tensor([[tokens[-1]]])
    return tokens


def prompt_ids(tokenizer: Any, config: Any) -> list[int]:
    """The check's prompt: :data:`PROMPT` tokenized, or fixed ids without a tokenizer; room left for the tokens."""
    fixed = [(7 * i + 3) % config.vocab_size for i in range(6)]
    ids = list(tokenizer(PROMPT)["input_ids"]) if tokenizer is not None else fixed
    room = config.max_position_embeddings - GREEDY_TOKENS
    if room < 2:
        raise ValueError(f"the model's context ({config.max_position_embeddings}) is too short for the ONNX check "
                         f"({GREEDY_TOKENS} tokens + a prompt)")
    return (ids + fixed)[: max(2, min(len(ids), room))]  # two tokens at least: the check splits the prompt


def check_fp32(session: OnnxDecoderSession, model: Any, prompt: list[int]) -> dict[str, Any]:
    """Logits without and with past keys within tolerance, and equal greedy tokens; raises on a mismatch."""
    with torch.no_grad():
        reference = model(input_ids=torch.tensor([prompt]), use_cache=False).logits
    atol = max(1e-4, logits_tolerance(model.config, reference))
    split = len(prompt) // 2
    full, _ = session.step(np.array([prompt]), session.empty_past(1), 0)
    _, past = session.step(np.array([prompt[:split]]), session.empty_past(1), 0)
    tail, _ = session.step(np.array([prompt[split:]]), past, split)
    diff = float(np.abs(full - reference.numpy()).max())
    diff_past = float(np.abs(tail - reference[:, split:].numpy()).max())
    if max(diff, diff_past) > atol:
        raise ExportVerificationError(
            f"onnxruntime logits differ from the model's by {diff:.3g} (no past) / {diff_past:.3g} (with past "
            f"keys), above the tolerance {atol:.3g}"
        )
    expected = source_greedy(model, prompt, GREEDY_TOKENS)
    got = session.greedy(prompt, GREEDY_TOKENS)
    if got != expected:
        raise ExportVerificationError(f"greedy tokens with the KV cache differ: onnxruntime {got}, model {expected}")
    return {"max_abs_diff": diff, "max_abs_diff_with_past": diff_past, "tolerance": atol, "greedy_tokens": got}


def check_int8(path: Path, fp32_path: Path, prompt: list[int], fp32_tokens: list[int]) -> dict[str, Any]:
    """Teacher-forced next-token agreement with fp32 >= :data:`INT8_MIN_AGREEMENT`; raises below it."""
    session = OnnxDecoderSession(path)
    sequence = np.array([prompt + fp32_tokens[:-1]])
    logits, _ = session.step(sequence, session.empty_past(1), 0)
    predicted = logits[0, len(prompt) - 1 :].argmax(-1).tolist()
    agreement = sum(int(a == b) for a, b in zip(predicted, fp32_tokens)) / len(fp32_tokens)
    free = session.greedy(prompt, GREEDY_TOKENS)
    result = {
        "int8_next_token_agreement": agreement,
        "int8_greedy_agreement": sum(int(a == b) for a, b in zip(free, fp32_tokens)) / len(fp32_tokens),
        "int8_greedy_tokens": free,
        "int8_size_ratio": round(path.stat().st_size / fp32_path.stat().st_size, 3),
    }
    if agreement < INT8_MIN_AGREEMENT:
        raise ExportVerificationError(
            f"the int8 model picks fp32's next token at {agreement:.0%} of {len(fp32_tokens)} positions, below "
            f"{INT8_MIN_AGREEMENT:.0%}; export without --quant"
        )
    return result


def verify_onnx(folder: Path, model: Any, tokenizer: Any, quantized: bool) -> dict[str, Any]:
    """Check ``folder/onnx/model.onnx`` (and the int8 file when ``quantized``) against ``model``; a report dict."""
    from .onnx_export import MODEL_FILE, ONNX_DIR, QUANTIZED_FILE

    start = time.perf_counter()
    prompt = prompt_ids(tokenizer, model.config)
    fp32_path = folder / ONNX_DIR / MODEL_FILE
    report = {"prompt_ids": prompt, **check_fp32(OnnxDecoderSession(fp32_path), model, prompt)}
    if quantized:
        report.update(check_int8(folder / ONNX_DIR / QUANTIZED_FILE, fp32_path, prompt, report["greedy_tokens"]))
    report["seconds"] = round(time.perf_counter() - start, 2)
    logger.info("ONNX self-check passed: max |logit diff| %.3g", report["max_abs_diff"])
    return report
