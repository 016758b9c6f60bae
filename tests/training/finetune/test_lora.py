"""LoRA through peft: only adapters train, adapters reload with the same logits, merged models need no peft."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

import scratch_gpt  # noqa: F401  (registers the Auto classes)
import scratch_gpt_cli
from scratch_gpt import run_folder
from tests.scratch_gpt.helpers import assert_logits_close
from tests.training.finetune.fixtures import (
    color_records, fast_options, keyword_rows, make_gpt2_dir, make_model_dir, make_tokenizer, write_json, write_sms,
)
from training.finetune.instruct import format_prompt
from training.finetune.lora import DEFAULT_TARGET_MODULES, LoraOptions, apply_lora, merge


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora")
    recs = color_records(60, seed=1)
    rows = keyword_rows(120, seed=1)
    texts = [format_prompt(r["instruction"], r["input"]) + r["output"] for r in recs] + [r["text"] for r in rows]
    tok = make_tokenizer(texts, vocab_size=400)
    make_model_dir(str(d / "base"), tok)
    write_json(str(d / "instruct.json"), recs)
    write_sms(str(d / "sms.txt"), rows)
    return d, tok


def _batch(tok):
    enc = tok(["What colour is the sky?", "The lime is green. The snow"], return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def _logits(model, ids, mask):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def test_only_adapters_train_and_every_path_gives_the_same_logits(setup, tmp_path):
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    from scratch_gpt import ScratchGPTForCausalLM

    d, tok = setup
    base_dir = str(d / "base")
    original = load_file(os.path.join(base_dir, "model.safetensors"))
    model = apply_lora(ScratchGPTForCausalLM.from_pretrained(base_dir), LoraOptions(lora_rank=4, lora_dropout=0.0))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n in trainable if ".lora_A" in n}
    assert adapted == set(DEFAULT_TARGET_MODULES)
    assert sum(".lora_A" in n for n in trainable) == 2 * 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj per layer

    # a few real optimizer steps
    ids, mask = _batch(tok)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    base_now = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                for k, v in model.state_dict().items() if "lora_" not in k}
    for k, v in original.items():
        assert torch.equal(base_now[k], v), f"base weight {k} changed"
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)  # B starts at zero

    ref = _logits(model, ids, mask)
    assert not torch.allclose(ref, _logits(ScratchGPTForCausalLM.from_pretrained(base_dir), ids, mask))

    adapter_dir = tmp_path / "adapter"
    model.peft_config["default"].base_model_name_or_path = os.path.abspath(base_dir)
    model.save_pretrained(adapter_dir)
    saved = load_file(str(adapter_dir / "adapter_model.safetensors"))
    assert saved and all("lora_" in k for k in saved)

    reloaded = PeftModel.from_pretrained(ScratchGPTForCausalLM.from_pretrained(base_dir), str(adapter_dir))
    torch.testing.assert_close(_logits(reloaded, ids, mask), ref, rtol=1e-5, atol=1e-5)
    auto = AutoPeftModelForCausalLM.from_pretrained(str(adapter_dir))
    torch.testing.assert_close(_logits(auto, ids, mask), ref, rtol=1e-5, atol=1e-5)

    merged = merge(model)
    assert not any("lora" in n for n, _ in merged.named_modules())
    merged_dir = tmp_path / "merged"
    merged.save_pretrained(merged_dir)
    assert not (merged_dir / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert type(plain).__name__ == "ScratchGPTForCausalLM"
    # W + s B A folded once, against x W + s (x A) B: the same sums, rounded in another order
    assert_logits_close(_logits(plain, ids, mask), ref, plain.config)


def test_unknown_target_modules_are_refused_with_the_choices(setup):
    from scratch_gpt import ScratchGPTForCausalLM

    d, _ = setup
    with pytest.raises(ValueError, match=r"\['q_proj'\] match no nn.Linear.*c_attn"):
        apply_lora(ScratchGPTForCausalLM.from_pretrained(str(d / "base")), LoraOptions(lora_target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="--lora-rank"):
        LoraOptions(lora_rank=0)


def test_cli_instruct_lora_merge_writes_a_plain_model_equal_to_base_plus_adapter(setup, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from scratch_gpt import ScratchGPTForCausalLM

    d, tok = setup
    out = tmp_path / "merged"
    rc = scratch_gpt_cli.main([
        "finetune", "instruct", str(d / "base"), "--dataset", str(d / "instruct.json"), "--output-dir", str(out),
        "--lora", "--lora-rank", "4", "--lora-dropout", "0", "--merge", "--max-steps", "4", "--learning-rate", "1e-2",
        "--eval-strategy", "no", "--save-strategy", "no", "--use-cpu", "--disable-tqdm", "--max-test-answers", "2",
        "--max-new-tokens", "4",
    ])
    assert rc == 0
    assert (out / "model.safetensors").exists() and not (out / "adapter_config.json").exists()
    assert (out / "adapter" / "adapter_config.json").exists()
    assert run_folder.load_training_args(out)["method"] == "lora-merged"
    train = run_folder.load_results(out)["train"]
    assert train["trainable_parameters"] < 0.5 * train["total_parameters"]

    plain = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in k for k in plain.state_dict())
    ids, mask = _batch(tok)
    via_adapter = PeftModel.from_pretrained(ScratchGPTForCausalLM.from_pretrained(str(d / "base")), str(out / "adapter"))
    ref = _logits(via_adapter, ids, mask)
    assert not torch.allclose(ref, _logits(ScratchGPTForCausalLM.from_pretrained(str(d / "base")), ids, mask))
    # W + s B A folded once, against x W + s (x A) B: the same sums, rounded in another order
    assert_logits_close(_logits(plain, ids, mask), ref, plain.config)


def test_cli_classify_lora_adapter_from_gpt2_reloads_with_labels(setup, tmp_path):
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoModelForSequenceClassification, pipeline

    d, tok = setup
    gpt2_dir = make_gpt2_dir(str(tmp_path / "gpt2"), tok)
    out = tmp_path / "clf"
    rc = scratch_gpt_cli.main([
        "finetune", "classify", gpt2_dir, "--dataset", str(d / "sms.txt"), "--output-dir", str(out),
        "--lora", "--lora-rank", "4", "--lora-dropout", "0", "--max-steps", "4", "--learning-rate", "1e-2",
        "--eval-strategy", "no", "--save-strategy", "no", "--use-cpu", "--disable-tqdm",
    ])
    assert rc == 0
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str((out / "base_model").resolve())
    saved = load_file(str(out / "adapter_model.safetensors"))
    assert any("score" in k for k in saved) and all(("lora_" in k) or ("score" in k) for k in saved)

    peft_model = AutoPeftModelForSequenceClassification.from_pretrained(str(out))
    assert peft_model.config.id2label == {0: "ham", 1: "spam"}
    ids, mask = _batch(tok)
    ref = _logits(peft_model, ids, mask)
    # transformers' own adapter loading (and so pipeline()) gives the same classifier
    native = AutoModelForSequenceClassification.from_pretrained(str(out))
    torch.testing.assert_close(_logits(native, ids, mask), ref, rtol=1e-5, atol=1e-5)
    preds = pipeline("text-classification", model=str(out), device="cpu")(["the cat sat", "winner winner"])
    assert {p["label"] for p in preds} <= {"ham", "spam"}
    base_logits = _logits(AutoModelForSequenceClassification.from_pretrained(str(out / "base_model")), ids, mask)
    assert not torch.allclose(base_logits, ref)  # the adapter (and trained head) changed the outputs


def test_lora_and_train_last_blocks_exclude_each_other(setup, tmp_path):
    from training.finetune.arguments import ClassifyArguments
    from training.finetune.classify import finetune_classifier

    d, _ = setup
    args = ClassifyArguments(model=str(d / "base"), dataset=str(d / "sms.txt"), output_dir=str(tmp_path / "o"),
                             train_last_blocks=1)
    with pytest.raises(ValueError, match="exclude each other"):
        finetune_classifier(args, fast_options(max_steps=1), lora=LoraOptions())
    assert not (tmp_path / "o").exists()
