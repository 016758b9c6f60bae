"""`scratch-gpt evaluate`: lm-eval's scores on tasks the test writes itself equal a hand computation.

Two local tasks (a task YAML over a local JSONL, no download): a multiple-choice ``loglikelihood`` task scored
with ``acc`` / ``acc_norm``, and a ``generate_until`` task scored with ``exact_match``. The expected scores come
from the model's own logits: summed continuation log-probabilities split the way lm-eval's ``hf`` backend splits
context and continuation, and a greedy argmax loop without cache for the generations. Gold answers are chosen so
that exactly half of the documents are right, which makes a wrong score visible. Sockets to anything but
loopback raise, so a network access fails the test.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch

from tests.conftest import make_tiny_config

MC_DOCS = [
    ("def add(a, b):", ["return a + b", "print(i)", "self.x = x"]),
    ("The quick brown fox", ["jumps over the lazy dog.", "import os", "Hello world!"]),
    ("for i in range(10):", ["print(i * i)", "class Point:", "return a"]),
    ("class Point:", ["def __init__(self, x, y):", "the lazy dog", "range(10)"]),
]
GEN_PROMPTS = ["def add(a, b):", "The quick brown", "import os", "Hello world!"]
MAX_GEN_TOKS = 6


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny model trained a few steps on the fixture texts, saved with its tokenizer."""
    from scratch_gpt import ScratchGPTForCausalLM
    from tests.conftest import TINY_TEXTS

    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(make_tiny_config(vocab_size=len(tiny_tokenizer)))
    ids = tiny_tokenizer("".join(TINY_TEXTS[:6]), return_tensors="pt").input_ids[:, :64]
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(20):
        model(input_ids=ids, labels=ids).loss.backward()
        optim.step()
        optim.zero_grad()
    path = tmp_path_factory.mktemp("eval") / "model"
    model.eval().save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def _continuation_logprob(model, tok, context: str, continuation: str) -> float:
    """Sum of log p(continuation | context), split as lm-eval's hf backend does (whole encoding minus context)."""
    whole = tok.encode(context + continuation)
    n_ctx = len(tok.encode(context))
    ids = torch.tensor([whole])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0, :-1].double(), dim=-1)
    targets = ids[0, n_ctx:]
    return logprobs[torch.arange(n_ctx - 1, len(whole) - 1), targets].sum().item()


def _greedy(model, tok, prompt: str) -> str:
    """Greedy text by argmax over full recomputed logits, cut at the eos token and at the first newline."""
    ids = tok.encode(prompt)
    new: list[int] = []
    with torch.no_grad():
        for _ in range(MAX_GEN_TOKS):
            nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            new.append(nxt)
    return tok.decode(new, skip_special_tokens=True).split("\n")[0]


@pytest.fixture(scope="module")
def tasks(model_dir, tmp_path_factory):
    """Write the two task YAMLs + JSONLs; return (task folder, expected scores)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    folder = tmp_path_factory.mktemp("tasks")
    mc_rows, hits, hits_norm = [], 0, 0
    for i, (question, choices) in enumerate(MC_DOCS):
        lls = [_continuation_logprob(model, tok, question, " " + c) for c in choices]
        best = max(range(len(choices)), key=lls.__getitem__)
        gold = best if i % 2 == 0 else (best + 1) % len(choices)  # half right by construction
        best_norm = max(range(len(choices)), key=lambda j: lls[j] / len(choices[j]))
        hits, hits_norm = hits + (best == gold), hits_norm + (best_norm == gold)
        mc_rows.append({"question": question, "choices": choices, "answer": gold})
    gen_rows, gen_hits = [], 0
    for i, prompt in enumerate(GEN_PROMPTS):
        target = _greedy(model, tok, prompt) if i % 2 == 0 else "not what the model says"
        gen_hits += i % 2 == 0
        gen_rows.append({"prompt": prompt, "target": target})
    _write_task(folder, "tiny_mc", mc_rows, MC_YAML)
    _write_task(folder, "tiny_gen", gen_rows, GEN_YAML)
    expected = {"tiny_mc": {"acc,none": hits / len(MC_DOCS), "acc_norm,none": hits_norm / len(MC_DOCS)},
                "tiny_gen": {"exact_match,none": gen_hits / len(GEN_PROMPTS)}}
    assert expected["tiny_mc"]["acc,none"] == 0.5 and expected["tiny_gen"]["exact_match,none"] == 0.5
    return folder, expected


MC_YAML = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""

GEN_YAML = """task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: {max_gen_toks}
  do_sample: false
metric_list:
  - metric: exact_match
"""


def _write_task(folder: Path, name: str, rows: list[dict], template: str) -> None:
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / f"{name}.yaml").write_text(template.format(data=data, max_gen_toks=MAX_GEN_TOKS))


@pytest.fixture
def offline(monkeypatch):
    """HF offline switches on, and any socket connection off loopback raises."""
    import datasets.config
    import huggingface_hub.constants

    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(key, "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    real_connect = socket.socket.connect

    def loopback_only(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("127.0.0.1", "::1", "localhost") and not host.startswith("/"):
            raise OSError(f"test is offline: connection to {address} refused")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)


def run_cli(argv: list[str]) -> int:
    """Run ``scratch-gpt`` with ``argv`` in this process."""
    from scratch_gpt_cli import main

    return main(argv)


def test_evaluate_scores_equal_hand_computation(model_dir, tasks, offline, capsys):
    from scratch_gpt import run_folder

    folder, expected = tasks
    run_folder.save_results(model_dir, "eval", {"eval_loss": 1.25})  # an earlier stage's metric survives
    code = run_cli(["evaluate", str(model_dir), "--tasks", "tiny_mc,tiny_gen", "--include-path", str(folder),
                    "--batch-size", "2", "--limit", "10"])
    assert code == 0
    table = capsys.readouterr().out
    assert "tiny_mc" in table and "tiny_gen" in table and "acc_norm" in table and "exact_match" in table
    recorded = run_folder.load_results(model_dir)["eval"]
    assert recorded["eval_loss"] == 1.25
    results = recorded[run_folder.LM_EVAL_KEY]["results"]
    for task, scores in expected.items():
        for metric, value in scores.items():
            assert results[task][metric] == pytest.approx(value, abs=1e-12), (task, metric)
    assert recorded[run_folder.LM_EVAL_KEY]["n-samples"]["tiny_mc"]["effective"] == len(MC_DOCS)


def test_exported_repo_is_evaluated_and_recorded(model_dir, tasks, offline, tmp_path):
    from hub_export.export import export_model
    from scratch_gpt import run_folder
    from training.evaluate.evaluate import evaluate

    folder, expected = tasks
    export = export_model(model_dir, tmp_path / "export").out_dir
    results = evaluate(str(export), "tiny_mc", include_path=str(folder))
    assert results["results"]["tiny_mc"]["acc,none"] == pytest.approx(expected["tiny_mc"]["acc,none"], abs=1e-12)
    recorded = run_folder.load_results(export)["eval"][run_folder.LM_EVAL_KEY]["results"]["tiny_mc"]
    assert recorded["acc_norm,none"] == pytest.approx(expected["tiny_mc"]["acc_norm,none"], abs=1e-12)


def test_model_card_picks_up_the_scores(model_dir, tasks, offline):
    from hub_export.card import lm_eval_rows, read_run_records
    from training.evaluate.evaluate import evaluate

    folder, expected = tasks
    evaluate(str(model_dir), "tiny_gen", include_path=str(folder))
    rows = {(task, metric): shown for task, metric, shown in lm_eval_rows(read_run_records(model_dir).lm_eval)}
    assert rows[("tiny_gen", "exact_match")].startswith("0.5")


def test_evaluation_merges_into_earlier_results(model_dir, tasks, offline):
    from scratch_gpt import run_folder
    from training.evaluate.evaluate import evaluate

    folder, _ = tasks
    earlier = {"results": {"other_task": {"acc,none": 0.25}}, "n-samples": {"other_task": {"effective": 3}}}
    run_folder.save_results(model_dir, "eval", {run_folder.LM_EVAL_KEY: earlier})
    evaluate(str(model_dir), "tiny_mc", include_path=str(folder), limit=2)
    results = run_folder.load_results(model_dir)["eval"][run_folder.LM_EVAL_KEY]
    assert results["results"]["other_task"] == {"acc,none": 0.25}
    assert results["n-samples"] == {"other_task": {"effective": 3}, "tiny_mc": {"original": 4, "effective": 2}}


@pytest.mark.parametrize(
    ("argv", "code", "match"),
    [
        (["MISSING", "--tasks", "tiny_mc"], 1, "does not exist"),
        (["MODEL", "--tasks", "no_such_task_xyz"], 1, "unknown lm-eval task no_such_task_xyz"),
        (["MODEL", "--tasks", " , "], 1, "no task given"),
        (["MODEL", "--tasks", "tiny_mc", "--batch-size", "0"], 2, "--batch-size must be"),
        (["MODEL", "--tasks", "tiny_mc", "--limit", "-1"], 2, "--limit must be > 0"),
        (["MODEL", "--tasks", "tiny_mc", "--include-path", "NOWHERE"], 1, "is not a folder"),
    ],
)
def test_bad_input_is_one_clear_line(model_dir, tmp_path, capsys, argv, code, match):
    from scratch_gpt import run_folder

    before = run_folder.load_results(model_dir)
    values = {"MISSING": str(tmp_path / "missing"), "MODEL": str(model_dir), "NOWHERE": str(tmp_path / "none")}
    assert run_cli(["evaluate", *[values.get(a, a) for a in argv]]) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("scratch-gpt evaluate: error: ") and match in err and "\n" not in err, err
    assert run_folder.load_results(model_dir) == before
