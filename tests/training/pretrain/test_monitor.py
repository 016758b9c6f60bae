"""The overfitting warning on synthetic loss curves, and the sample prompt taken from a validation document."""

from __future__ import annotations

import pytest

from training.pretrain.monitor import default_prompt, eval_points, overfitting_warning


def _history(train: list[float], val: list[float], logs_per_eval: int = 2) -> list[dict]:
    """A log history as the loop writes it: training losses every few steps, then an evaluation."""
    history, step = [], 0
    for i, v in enumerate(val):
        for j in range(logs_per_eval):
            step += 10
            history.append({"step": step, "loss": train[i] + 0.01 * (logs_per_eval - 1 - j)})
        history.append({"step": step, "eval_loss": v, "eval_perplexity": 2.0})
    return history


def test_eval_points_average_the_training_losses_since_the_last_evaluation():
    history = [{"step": 1, "loss": 4.0}, {"step": 2, "loss": 2.0}, {"step": 2, "eval_loss": 3.5},
               {"step": 3, "loss": 1.0}, {"step": 3, "eval_loss": 3.0}, {"step": 3, "eval_loss": 3.1}]
    assert eval_points(history) == [(3.0, 3.5), (1.0, 3.0)]  # a second evaluation with no new loss is skipped


def test_warns_when_validation_rises_twice_while_training_falls():
    history = _history(train=[3.0, 2.5, 2.0, 1.6, 1.2], val=[3.2, 2.9, 2.8, 2.9, 3.1])
    message = overfitting_warning(history, epochs=3.04)
    assert message is not None
    assert "after 3.0 epochs" in message and "2.8000 -> 2.9000 -> 3.1000" in message
    assert "more data" in message and "--dropout" in message and "fewer steps" in message


@pytest.mark.parametrize(
    "train, val",
    [
        ([3.0, 2.5, 2.0, 1.6, 1.2], [3.2, 2.9, 2.8, 2.7, 2.65]),  # still generalising
        ([3.0, 2.5, 2.0, 1.6, 1.2], [3.2, 2.9, 2.8, 2.9, 2.85]),  # one rise, then down again
        ([3.0, 2.5, 2.6, 2.8, 3.0], [3.2, 2.9, 2.8, 2.9, 3.1]),  # both rise: diverging, not overfitting
        ([3.0, 2.0], [3.2, 3.3]),  # too few evaluations
    ],
)
def test_no_warning_otherwise(train, val):
    assert overfitting_warning(_history(train, val), epochs=2.0) is None


def test_warning_without_a_known_epoch_count():
    message = overfitting_warning(_history([3.0, 2.0, 1.0], [2.0, 2.1, 2.2]), epochs=None)
    assert message is not None and "so far" in message


def test_default_prompt_is_the_start_of_the_first_validation_document():
    from tests.training.pretrain.helpers import make_tokenizer

    tok = make_tokenizer()
    doc = "class C7:\n    pass\n"
    ids = tok(doc, add_special_tokens=False).input_ids + [tok.eos_token_id] + tok("def g():", add_special_tokens=False).input_ids
    prompt = default_prompt(ids, tok, max_tokens=200)
    assert prompt == doc  # stops at the document's end, not in the next one
    short = default_prompt(ids, tok, max_tokens=3)
    assert doc.startswith(short) and 0 < len(short) < len(doc)
    assert default_prompt([tok.eos_token_id, 5, 6], tok) == ""
    assert default_prompt(ids, None) == ""
