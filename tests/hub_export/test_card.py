"""The model card: YAML header, the run's validation / test / lm-eval metrics, the loss plot, public settings."""

from __future__ import annotations

import json
import math
import re

import yaml
from huggingface_hub import ModelCard

from hub_export.card import (
    TESTED_TRANSFORMERS,
    CardOptions,
    build_model_card,
    is_local_path,
    lm_eval_rows,
    public_settings,
    read_run_records,
)
from scratch_gpt import run_folder

from .conftest import CLS_EVAL, CLS_TEST, LOG_HISTORY, REPO_ROOT


def _front_matter(text: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", text, flags=re.DOTALL)
    assert match, "README.md must start with a YAML header"
    return yaml.safe_load(match.group(1))


def _section(text: str, title: str) -> str:
    return text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def _table_after(text: str, caption: str) -> dict[str, float]:
    """The metric | value table that follows ``caption`` (values parsed back as JSON numbers)."""
    block = text.split(caption, 1)[1].split("\n\n", 2)[1]
    rows = re.findall(r"^\| (\S+) \| (\S+) \|$", block, flags=re.MULTILINE)
    return {k: json.loads(v) for k, v in rows if k != "metric"}


def test_pretraining_card_header_validation_loss_perplexity_plot(lm_export):
    text = (lm_export.out_dir / run_folder.MODEL_CARD_FILE).read_text()
    meta = _front_matter(text)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert meta["license"] == "apache-2.0"
    assert {"scratch-gpt", "custom_code", "tiny"} <= set(meta["tags"])
    assert meta["datasets"] == ["owner/tiny-corpus"]
    assert "base_model" not in meta  # pretrained from scratch
    card = ModelCard.load(lm_export.out_dir / run_folder.MODEL_CARD_FILE)  # huggingface_hub parses it the same way
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"

    evaluation = _section(text, "Evaluation")
    last_eval = [r for r in LOG_HISTORY if "eval_loss" in r][-1]
    assert _table_after(evaluation, "Validation") == {"loss": last_eval["eval_loss"],
                                                      "perplexity": last_eval["eval_perplexity"]}
    assert f"![loss curve]({run_folder.LOSS_PLOT_FILE})" in evaluation
    assert "train_loss 4.31" in text  # final training loss from train_results
    assert "python-stdlib" in text and "| learning_rate | `0.0003` |" in text and "| optim.warmup_steps | `5` |" in text
    assert 'pipeline("text-generation", model="owner/tiny-gpt", trust_remote_code=True)' in text
    assert f"transformers{TESTED_TRANSFORMERS}" in text  # the range pyproject.toml declares (below)
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert f'"transformers{TESTED_TRANSFORMERS}",' in pyproject
    shipped = [f for f in lm_export.files if f.endswith(".py")]
    assert shipped and all(f"`{f}`" in text for f in shipped)  # the card names the code it asks you to trust
    assert "## Limitations" in text


def test_card_lists_lm_eval_scores(lm_export):
    evaluation = _section((lm_export.out_dir / run_folder.MODEL_CARD_FILE).read_text(), "Evaluation")
    bench = evaluation.split("### Benchmarks (lm-evaluation-harness)", 1)[1]
    rows = re.findall(r"^\| (\S+) \| (\S+) \| (.+) \|$", bench, flags=re.MULTILINE)
    assert ("hellaswag", "acc", "0.2625 ± 0.0139") in rows
    assert ("hellaswag", "acc_norm", "0.27") in rows
    assert ("arc_easy", "acc", "0.3125 ± 0.0164") in rows
    assert not any("stderr" in metric or metric == "alias" for _, metric, _ in rows)


def test_finetuned_classifier_card_lists_validation_and_test_metrics(cls_export):
    text = (cls_export.out_dir / run_folder.MODEL_CARD_FILE).read_text()
    meta = _front_matter(text)
    assert meta["base_model"] == "owner/tiny-gpt" and meta["pipeline_tag"] == "text-classification"
    assert meta["datasets"] == ["owner/sms-spam"]  # the settings name a Hub dataset: it goes into the header
    evaluation = _section(text, "Evaluation")
    test = _table_after(evaluation, "Test")
    assert test == {"loss": CLS_TEST["test_loss"], "accuracy": CLS_TEST["test_accuracy"],
                    "f1_macro": CLS_TEST["test_f1_macro"]}
    validation = _table_after(evaluation, "Validation")
    assert validation["accuracy"] == CLS_EVAL["eval_accuracy"] and validation["f1_macro"] == CLS_EVAL["eval_f1_macro"]
    confusion = evaluation.split("Test confusion matrix", 1)[1]
    assert "| **negative** | 5 | 1 | 0 |" in confusion and "| true \\ predicted | negative | neutral | positive |" in confusion
    assert "runtime" not in evaluation and "perplexity" not in evaluation  # machine timings; not a language model
    assert "No evaluation was recorded" not in text
    assert 'pipeline("text-classification"' in text and "trust_remote_code=True" in text


def test_card_without_records_says_so(tmp_path):
    config = {"model_type": "scratch_gpt", "architectures": ["ScratchGPTForCausalLM"], "hidden_size": 32,
              "max_position_embeddings": 64, "vocab_size": 300}
    card = str(build_model_card(config, export_format="remote-code", task="text-generation", num_parameters=10,
                                run_dir=tmp_path, plot_name=None, has_tokenizer=True))
    assert "No evaluation was recorded for this run." in card and "Settings: not recorded" in card


def test_base_model_inferred_from_run_settings_and_gpt2_snippet(tmp_path):
    run_folder.save_training_args(tmp_path, {"model_name_or_path": "someone/base-gpt", "lr": 1e-4})
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 32, "n_layer": 2, "n_head": 4,
              "n_positions": 64, "vocab_size": 300}
    card = build_model_card(config, export_format="gpt2", task="text-generation", num_parameters=1234,
                            run_dir=tmp_path, plot_name=None, has_tokenizer=True,
                            options=CardOptions(license="mit", repo_id="me/g"))
    meta = _front_matter(str(card))
    assert meta["base_model"] == "someone/base-gpt" and meta["license"] == "mit"
    assert "custom_code" not in meta["tags"]
    assert "trust_remote_code" not in str(card)


def test_validation_falls_back_to_log_history_with_perplexity(tmp_path):
    """No eval results file: the last evaluation of log_history, and perplexity = exp(loss) when not logged."""
    run_folder.save_log_history(tmp_path, [{"step": 5, "eval_loss": 3.0}, {"step": 8, "loss": 2.5},
                                           {"step": 10, "eval_loss": 2.0, "eval_runtime": 1.5}])
    records = read_run_records(tmp_path)
    assert records.validation == {"eval_loss": 2.0} and records.validation_step == 10
    config = {"model_type": "scratch_gpt", "architectures": ["ScratchGPTForCausalLM"], "vocab_size": 300}
    text = str(build_model_card(config, export_format="remote-code", task="text-generation", num_parameters=10,
                                run_dir=tmp_path, plot_name=None, has_tokenizer=True))
    table = _table_after(_section(text, "Evaluation"), "Validation")
    assert table["loss"] == 2.0 and math.isclose(table["perplexity"], math.exp(2.0), rel_tol=1e-12)
    assert "step 10" in text


def test_public_settings_drop_local_paths_and_keep_hub_ids(tmp_path):
    local_file = tmp_path / "private_medical_notes" / "notes.txt"
    settings = {
        "dataset": str(local_file),
        "tokenizer": str(tmp_path / "private_medical_notes" / "tok"),
        "data": {"train_file": "private_medical_notes/notes.jsonl", "text_column": "text"},
        "init_from": "owner/base",
        "output_dir": "runs/x",
        "lr": 1e-3,
        "targets": ["c_attn", "c_proj"],
    }
    public = public_settings(settings)
    assert public == {"dataset": "notes.txt", "data.train_file": "notes.jsonl", "data.text_column": "text",
                      "init_from": "owner/base", "lr": 1e-3, "targets": "c_attn, c_proj"}
    assert is_local_path("./x") and is_local_path("/abs") and is_local_path("a/b/c") and is_local_path("C:\\data")
    assert not is_local_path("python-stdlib") and not is_local_path("owner/dataset")
    # a relative `runs/base` recorded when training started in the project folder, exported from elsewhere
    (tmp_path / "runs" / "base").mkdir(parents=True)
    assert not is_local_path("runs/base") and is_local_path("runs/base", roots=(tmp_path,))
    assert public_settings({"model": "runs/base"}, roots=(tmp_path,)) == {}


def test_lm_eval_rows_accept_plain_and_wrapped_results():
    plain = {"piqa": {"acc": 0.6, "acc_stderr": 0.02}, "note": "text"}
    assert lm_eval_rows(plain) == [("piqa", "acc", "0.6 ± 0.0200")]
    assert lm_eval_rows({"results": plain}) == lm_eval_rows(plain)
    assert lm_eval_rows(None) == [] and lm_eval_rows("broken") == []
