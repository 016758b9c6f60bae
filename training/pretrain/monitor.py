"""What the loop watches besides the loss: signs of overfitting, and a sample prompt that fits the corpus.

Both are pure functions of what the loop already has (its log history, the validation blocks), so they are
tested on synthetic curves and blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["default_prompt", "eval_points", "overfitting_warning"]


def eval_points(log_history: Sequence[dict[str, Any]]) -> list[tuple[float, float]]:
    """(training loss, validation loss) per evaluation, oldest first.

    The training loss of an evaluation is the mean of the training losses logged since the previous one
    (a smoother signal than the last logged step); evaluations with no training loss before them are skipped.
    """
    points, pending = [], []
    for record in log_history:
        if "loss" in record:
            pending.append(float(record["loss"]))
        if "eval_loss" in record and pending:
            points.append((sum(pending) / len(pending), float(record["eval_loss"])))
            pending = []
    return points


def overfitting_warning(log_history: Sequence[dict[str, Any]], epochs: float | None) -> str | None:
    """The warning to log when the validation loss rose at the last two evaluations while training loss fell.

    ``epochs``: passes over the training split so far (None when unknown, e.g. a stream).
    """
    points = eval_points(log_history)
    if len(points) < 3:
        return None
    (t0, v0), (t1, v1), (t2, v2) = points[-3:]
    if not (v2 > v1 > v0 and t2 < t1 < t0):
        return None
    seen = f"after {epochs:.1f} epochs of the training split" if epochs is not None else "so far"
    return (
        f"the model is overfitting {seen}: validation loss rose for two evaluations in a row "
        f"({v0:.4f} -> {v1:.4f} -> {v2:.4f}) while training loss fell ({t0:.4f} -> {t2:.4f}). "
        "Use more data, add --dropout (e.g. 0.1), or train fewer steps (--max-steps / --max-time)"
    )


def default_prompt(first_validation_block: Sequence[int], tokenizer, max_tokens: int = 8) -> str:
    """The start of the first validation document: its first ``max_tokens`` tokens (stopping at an EOS), decoded.

    Packed blocks start at a document start, so the first validation block begins with one. Empty when the
    block starts with an EOS or there is no tokenizer (sampling then starts from EOS alone).
    """
    if tokenizer is None:
        return ""
    ids = [int(t) for t in list(first_validation_block)[:max_tokens]]
    eos = tokenizer.eos_token_id
    if eos in ids:
        ids = ids[: ids.index(eos)]
    return tokenizer.decode(ids)
