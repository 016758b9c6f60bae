"""The model card: YAML header fields, metrics = the run's last evaluation, defensive reading of run files."""

from __future__ import annotations

import json
import re

import yaml
from huggingface_hub import ModelCard

from hub_export.card import CardOptions, build_model_card, last_evaluation, read_jsonl

from .conftest import METRICS


def _front_matter(text: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", text, flags=re.DOTALL)
    assert match, "README.md must start with a YAML header"
    return yaml.safe_load(match.group(1))


def _metrics_table(text: str) -> dict[str, float]:
    section = text.split("## Evaluation", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\S+) \| (\S+) \|$", section, flags=re.MULTILINE)
    return {k: json.loads(v) for k, v in rows if k != "metric"}


def test_card_header_and_metrics(lm_export):
    text = (lm_export.out_dir / "README.md").read_text()
    meta = _front_matter(text)
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "text-generation"
    assert meta["license"] == "apache-2.0"
    assert {"scratch-gpt", "custom_code", "tiny"} <= set(meta["tags"])
    assert meta["datasets"] == ["owner/tiny-corpus"]
    assert "base_model" not in meta  # pretrained from scratch
    # huggingface_hub parses it the same way
    card = ModelCard.load(lm_export.out_dir / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"

    # metrics table == the last evaluation record of metrics.jsonl (numbers exactly)
    last_eval = [r for r in METRICS if "val_loss" in r][-1]
    assert _metrics_table(text) == last_eval
    # loss plot embedded, settings and usage present
    assert "![loss curve](loss_plot.png)" in text
    assert "python-stdlib" in text and "| learning_rate | `0.0003` |" in text
    assert 'pipeline("text-generation", model="owner/tiny-gpt", trust_remote_code=True)' in text
    assert "transformers>=5.0,<6" in text
    shipped = [f for f in lm_export.files if f.endswith(".py")]
    assert shipped and all(f"`{f}`" in text for f in shipped)  # the card names the code it asks you to trust
    assert "## Limitations" in text


def test_finetuned_card_has_base_model(cls_export):
    meta = _front_matter((cls_export.out_dir / "README.md").read_text())
    assert meta["base_model"] == "owner/tiny-gpt"
    assert meta["pipeline_tag"] == "text-classification"
    text = (cls_export.out_dir / "README.md").read_text()
    assert "No evaluation metrics were recorded" in text
    assert 'pipeline("text-classification"' in text and "trust_remote_code=True" in text


def test_base_model_inferred_from_run_settings_and_gpt2_snippet(tmp_path):
    (tmp_path / "training_args.json").write_text(json.dumps({"model_name_or_path": "someone/base-gpt", "lr": 1e-4}))
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 32, "n_layer": 2, "n_head": 4,
              "n_positions": 64, "vocab_size": 300}
    card = build_model_card(config, export_format="gpt2", task="text-generation", num_parameters=1234,
                            run_dir=tmp_path, plot_name=None, has_tokenizer=True,
                            options=CardOptions(license="mit", repo_id="me/g"))
    meta = _front_matter(str(card))
    assert meta["base_model"] == "someone/base-gpt" and meta["license"] == "mit"
    assert "custom_code" not in meta["tags"]
    assert "trust_remote_code" not in str(card)


def test_metrics_read_defensively(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n\n[1, 2]\n{broken\n')
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 3.0}]
    assert last_evaluation(tmp_path) == (None, None)  # training records only: no evaluation
    # Trainer runs: log_history of trainer_state.json
    (tmp_path / "metrics.jsonl").unlink()
    state = {"log_history": [{"step": 5, "eval_loss": 0.7, "eval_accuracy": 0.5},
                             {"step": 8, "loss": 0.4},
                             {"step": 10, "eval_loss": 0.6, "eval_accuracy": 0.75, "eval_runtime": 1.5}]}
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))
    metrics, source = last_evaluation(tmp_path)
    assert source == "trainer_state.json"
    assert metrics == {"step": 10, "eval_loss": 0.6, "eval_accuracy": 0.75, "eval_runtime": 1.5}
