"""Classification finetuning: data loading, labels, splits, metrics, freezing, CLI, saved-folder round trip."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import scratch_gpt  # noqa: F401  (registers the Auto classes)
import scratch_gpt_cli
from tests.training.finetune.fixtures import (
    KEYWORD,
    fast_options,
    keyword_rows,
    make_gpt2_dir,
    make_model_dir,
    make_tokenizer,
    write_json,
    write_sms,
)
from scratch_gpt import run_folder
from training.finetune.arguments import ClassifyArguments
from training.finetune.classify import (
    build_label_maps,
    classification_metrics,
    confusion_matrix,
    finetune_classifier,
    load_classification_splits,
    load_sms_spam,
    stratified_split,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _args(workdir, out, **overrides) -> ClassifyArguments:
    """Classifier arguments on the keyword task of ``workdir``."""
    values = dict(model=str(workdir / "base"), dataset=str(workdir / "sms.txt"), output_dir=str(out))
    return ClassifyArguments(**{**values, **overrides})


@pytest.fixture(scope="module")
def rows():
    return keyword_rows(800, seed=0)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, rows):
    """A tokenizer trained on the synthetic texts, a random tiny model folder and the data as an SMS file."""
    d = tmp_path_factory.mktemp("classify")
    tok = make_tokenizer([r["text"] for r in rows])
    make_model_dir(str(d / "base"), tok)
    write_sms(str(d / "sms.txt"), rows)
    return d


# ----------------------------------------------------------------------------------------- metrics
def test_metrics_on_a_hand_computed_example():
    y, p = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0])
    assert confusion_matrix(y, p, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    m = classification_metrics(y, p, 3)
    # per class: precision 1/2, 2/3, 0 (never predicted); recall 1/2, 1, 0; F1 1/2, 4/5, 0
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["precision_macro"] == pytest.approx((0.5 + 2 / 3) / 3)
    assert m["recall_macro"] == pytest.approx(0.5)
    assert m["f1_macro"] == pytest.approx(1.3 / 3)


def test_metrics_match_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for num_labels in (2, 3, 5):
        y = rng.integers(0, num_labels, 200)
        p = np.where(rng.random(200) < 0.6, y, rng.integers(0, num_labels, 200))
        p[p == num_labels - 1] = 0  # a class never predicted: precision 0/0 must count as 0
        ours = classification_metrics(y, p, num_labels)
        assert ours["accuracy"] == pytest.approx(sk.accuracy_score(y, p))
        assert ours["f1_macro"] == pytest.approx(sk.f1_score(y, p, average="macro", zero_division=0))
        assert ours["precision_macro"] == pytest.approx(sk.precision_score(y, p, average="macro", zero_division=0))
        assert ours["recall_macro"] == pytest.approx(sk.recall_score(y, p, average="macro", zero_division=0))
        np.testing.assert_array_equal(
            confusion_matrix(y, p, num_labels), sk.confusion_matrix(y, p, labels=list(range(num_labels)))
        )


# -------------------------------------------------------------------------------------------- data
def test_sms_loader_reads_label_tab_text(tmp_path):
    path = tmp_path / "SMSSpamCollection"
    path.write_text("ham\tGo until jurong point, crazy..\n\nspam\tFree entry\tin 2 a wkly comp\r\nham\t\"quoted\" text\n")
    ds = load_sms_spam(str(path))
    assert ds["label"] == ["ham", "spam", "ham"]
    assert ds["text"] == ["Go until jurong point, crazy..", "Free entry\tin 2 a wkly comp", '"quoted" text']
    # auto-detection: no suffix means the SMS format
    splits = load_classification_splits(str(path))
    assert splits["train"]["text"] == ds["text"]

    bad = tmp_path / "bad.txt"
    bad.write_text("ham\tok\nspam no tab here\n")
    with pytest.raises(ValueError, match="line 2 has no tab"):
        load_sms_spam(str(bad))


def test_label_maps_from_strings_ints_and_errors(tmp_path):
    from datasets import Dataset, DatasetDict

    d = DatasetDict({"train": Dataset.from_dict({"label": ["spam", "ham", "spam"]}),
                     "test": Dataset.from_dict({"label": ["other", "ham"]})})
    id2label, value_to_id = build_label_maps(d, "label")
    assert id2label == {0: "ham", 1: "other", 2: "spam"}
    assert value_to_id == {"ham": 0, "other": 1, "spam": 2}

    ints = DatasetDict({"train": Dataset.from_dict({"label": [2, 0, 1, 0]})})
    assert build_label_maps(ints, "label")[0] == {0: "0", 1: "1", 2: "2"}
    assert build_label_maps(ints, "label", ["neg", "neu", "pos"])[0] == {0: "neg", 1: "neu", 2: "pos"}
    with pytest.raises(ValueError, match="--label-names"):
        build_label_maps(ints, "label", ["a", "b"])

    single = DatasetDict({"train": Dataset.from_dict({"label": ["ham", "ham"]})})
    with pytest.raises(ValueError, match="single class"):
        build_label_maps(single, "label")
    mixed = DatasetDict({"train": Dataset.from_dict({"label": ["1", "2"]}), "test": Dataset.from_dict({"label": [1, 2]})})
    with pytest.raises(ValueError, match="mixes label types"):
        build_label_maps(mixed, "label")


def test_stratified_split_is_seeded_disjoint_and_keeps_proportions():
    from datasets import Dataset

    ds = Dataset.from_dict({"idx": list(range(300)), "label": ["a"] * 200 + ["b"] * 100})
    s1 = stratified_split(ds, "label", {"validation": 0.1, "test": 0.2}, seed=7)
    s2 = stratified_split(ds, "label", {"validation": 0.1, "test": 0.2}, seed=7)
    s3 = stratified_split(ds, "label", {"validation": 0.1, "test": 0.2}, seed=8)
    assert {k: v["idx"] for k, v in s1.items()} == {k: v["idx"] for k, v in s2.items()}
    assert s1["test"]["idx"] != s3["test"]["idx"]
    parts = [set(s1[k]["idx"]) for k in ("train", "validation", "test")]
    assert sum(map(len, parts)) == 300 and len(set.union(*parts)) == 300
    assert s1["test"]["label"].count("a") == 40 and s1["test"]["label"].count("b") == 20
    assert s1["validation"]["label"].count("a") == 20 and s1["validation"]["label"].count("b") == 10


# ---------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def cli_classifier(workdir):
    """`scratch-gpt finetune classify` on the keyword task (full finetuning from a random tiny model)."""
    out = workdir / "clf"
    rc = scratch_gpt_cli.main([
        "finetune", "classify", str(workdir / "base"), "--dataset", str(workdir / "sms.txt"),
        "--output-dir", str(out), "--epochs", "4", "--learning-rate", "3e-3", "--batch-size", "16",
        "--weight-decay", "0", "--eval-strategy", "epoch", "--save-strategy", "no", "--seed", "0",
        "--use-cpu", "--disable-tqdm", "--logging-steps", "20",
    ])
    assert rc == 0
    return out


def test_classifier_learns_keyword_task_and_records_it(cli_classifier):
    results = run_folder.load_results(cli_classifier)
    sizes = (results["train"]["train_samples"], results["eval"]["eval_samples"], results["test"]["test_samples"])
    assert sizes == (560, 80, 160)
    test, val = results["test"], results["eval"]
    assert test["test_accuracy"] > 0.9, test
    assert val["eval_accuracy"] > 0.9, val
    for key in ("test_f1_macro", "test_precision_macro", "test_recall_macro", "test_loss"):
        assert key in test
    cm = test["test_confusion_matrix"]
    assert cm["labels"] == ["ham", "spam"]
    matrix = np.array(cm["rows_true_columns_predicted"])
    assert matrix.sum() == 160 and matrix.sum(axis=1).tolist() == [80, 80]  # stratified split
    assert np.trace(matrix) / matrix.sum() == pytest.approx(test["test_accuracy"])
    all_results = json.loads((cli_classifier / "all_results.json").read_text())
    assert all_results["test_accuracy"] == test["test_accuracy"] and all_results["train_samples"] == 560
    settings = run_folder.load_training_args(cli_classifier)
    assert settings["method"] == "full" and settings["id2label"] == {"0": "ham", "1": "spam"}
    assert settings["trainer"]["epochs"] == 4 and settings["task"] == "text-classification"
    history = run_folder.load_log_history(cli_classifier)
    assert len([r for r in history if "eval_loss" in r]) == 4 and any("loss" in r for r in history)
    assert (cli_classifier / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert not (cli_classifier / "checkpoints").exists()  # removed after success
    assert not list(cli_classifier.parent.glob(".clf.*"))  # no staging leftovers


def test_saved_classifier_loads_in_auto_class_and_pipeline(cli_classifier, rows):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    model = AutoModelForSequenceClassification.from_pretrained(cli_classifier)
    tok = AutoTokenizer.from_pretrained(cli_classifier)
    assert type(model).__name__ == "ScratchGPTForSequenceClassification"
    assert model.config.id2label == {0: "ham", 1: "spam"}
    assert tok.pad_token is not None and model.config.pad_token_id == tok.pad_token_id

    clf = pipeline("text-classification", model=str(cli_classifier), device="cpu")
    texts = ["the cat sat on the mat today", f"call me {KEYWORD} at noon", "we saw a big red car", f"{KEYWORD} house"]
    preds = [p["label"] for p in clf(texts)]
    assert preds == ["ham", "spam", "ham", "spam"]
    # batched (padded) inference through the pipeline agrees with one-by-one
    assert [p["label"] for p in clf(texts, batch_size=4)] == preds


def test_train_last_blocks_changes_only_last_block_norm_and_head(workdir):
    out = workdir / "last1"
    result = finetune_classifier(
        _args(workdir, out, train_last_blocks=1), fast_options(max_steps=5, learning_rate=1e-2)
    )
    before = load_file(str(workdir / "base" / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert "score.weight" in after
    changed = {k for k, v in after.items() if k in before and not torch.equal(v, before[k])}
    for k in before:
        if k.startswith("lm_head"):
            continue
        should_change = k.startswith(("transformer.h.1.", "transformer.ln_f."))
        assert (k in changed) == should_change, k
    assert result.method == run_folder.load_training_args(out)["method"] == "last-1-blocks"
    train = run_folder.load_results(out)["train"]
    assert 0 < train["trainable_parameters"] < train["total_parameters"]


def test_gpt2_folder_is_converted_on_the_fly(workdir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(workdir / "base")
    gpt2_dir = make_gpt2_dir(str(tmp_path / "gpt2"), tok, seed=3)
    out = tmp_path / "out"
    # only ln_f and the head train: block weights must equal GPT-2's (Conv1D transposed)
    finetune_classifier(_args(workdir, out, model=gpt2_dir, train_last_blocks=0), fast_options(max_steps=2))
    gpt2 = load_file(os.path.join(gpt2_dir, "model.safetensors"))
    ours = load_file(str(out / "model.safetensors"))
    torch.testing.assert_close(ours["transformer.h.0.attn.c_attn.weight"], gpt2["transformer.h.0.attn.c_attn.weight"].T)
    torch.testing.assert_close(ours["transformer.wte.weight"], gpt2["transformer.wte.weight"])
    assert json.loads((out / "config.json").read_text())["model_type"] == "scratch_gpt"


def test_resume_from_checkpoint_reaches_the_same_weights(workdir, tmp_path):
    opts = dict(learning_rate=3e-3, lr_scheduler="constant", save_strategy="steps", save_steps=3)
    straight = tmp_path / "straight"
    finetune_classifier(_args(workdir, straight), fast_options(max_steps=6, **opts))
    # a run that stopped after 3 steps with its checkpoint kept, then resumed to 6
    resumed = tmp_path / "resumed"
    finetune_classifier(_args(workdir, resumed, keep_checkpoints=True), fast_options(max_steps=3, **opts))
    assert (resumed / "checkpoints" / "checkpoint-3").is_dir()
    with pytest.raises(FileExistsError, match="--resume-from-checkpoint"):
        finetune_classifier(_args(workdir, resumed), fast_options(max_steps=6, **opts))
    finetune_classifier(_args(workdir, resumed, resume_from_checkpoint="latest"), fast_options(max_steps=6, **opts))
    a = load_file(str(straight / "model.safetensors"))
    b = load_file(str(resumed / "model.safetensors"))
    first = load_file(str(workdir / "base" / "model.safetensors"))
    assert not torch.equal(a["transformer.h.0.attn.c_attn.weight"], first["transformer.h.0.attn.c_attn.weight"])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------------- bad input
def _cli_error(capsys, argv: list[str]) -> str:
    rc = scratch_gpt_cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 1, err
    return err


def test_missing_columns_are_named_with_the_available_ones(workdir, tmp_path, capsys):
    data = write_json(str(tmp_path / "d.json"), [{"sentence": "a b", "label": "x"}, {"sentence": "c", "label": "y"}])
    base = ["finetune", "classify", str(workdir / "base"), "--dataset", data, "--output-dir", str(tmp_path / "o")]
    err = _cli_error(capsys, base)
    assert "no text column 'text'" in err and "'sentence'" in err and "--text-column" in err
    err = _cli_error(capsys, base + ["--text-column", "sentence", "--label-column", "category"])
    assert "no label column 'category'" in err and "--label-column" in err


def test_single_class_is_refused(workdir, tmp_path, capsys):
    data = write_sms(str(tmp_path / "one.txt"), [{"label": "ham", "text": f"text {i}"} for i in range(20)])
    err = _cli_error(capsys, ["finetune", "classify", str(workdir / "base"), "--dataset", data,
                              "--output-dir", str(tmp_path / "o")])
    assert "single class" in err and "['ham']" in err


def test_model_folder_must_be_scratch_gpt_or_gpt2(workdir, tmp_path, capsys):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    argv = ["finetune", "classify", str(bert), "--dataset", str(workdir / "sms.txt"), "--output-dir", str(tmp_path / "o")]
    err = _cli_error(capsys, argv)
    assert "'bert'" in err and "scratch-gpt or GPT-2" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    argv[2] = str(empty)
    err = _cli_error(capsys, argv)
    assert "without config.json" in err and "scratch-gpt train" in err
    assert not (tmp_path / "o").exists()  # nothing written for a refused run
