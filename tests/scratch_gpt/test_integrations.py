"""transformers' machinery on ScratchGPT: Trainer with gradient accumulation, pipelines, PEFT."""

import pytest
import torch
from transformers import pipeline

from scratch_gpt import ScratchGPTForCausalLM, ScratchGPTForSequenceClassification
from tests.conftest import make_tiny_config
from tests.scratch_gpt.helpers import assert_grads_close, big_and_accumulated_grads, uneven_label_rows


def test_trainer_gradient_accumulation_matches_one_big_batch(tmp_path):
    """Uneven numbers of real tokens per micro-batch: only a loss that honours num_items_in_batch matches."""
    data = uneven_label_rows()
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(make_tiny_config())
    start = {k: v.clone() for k, v in model.state_dict().items()}
    big, accumulated = big_and_accumulated_grads(model, data, tmp_path)
    # one batch of 4 against 4 of 1: the same sums over 64 tokens (and the 128-wide MLP) in another order
    assert_grads_close(accumulated, big, reduction_len=128, depth=model.config.num_hidden_layers + 1)

    # and the loss itself: the mean over all real tokens of the batch, as one forward computes it
    batch = torch.tensor(data["input_ids"])
    labels = torch.tensor(data["labels"])
    model.load_state_dict(start)
    one = model(batch, labels=labels).loss
    n_items = (labels[:, 1:] != -100).sum()
    parts = sum(model(batch[i : i + 1], labels=labels[i : i + 1], num_items_in_batch=n_items).loss for i in range(4))
    torch.testing.assert_close(parts, one)


def test_text_generation_pipeline_on_saved_folder(tiny_model_dir, tiny_tokenizer):
    generator = pipeline("text-generation", model=str(tiny_model_dir), device="cpu")
    tiny_tokenizer.padding_side = "left"
    generator.tokenizer.padding_side = "left"
    prompts = ["def add(a, b):", "Hello"]
    outputs = generator(prompts, max_new_tokens=6, do_sample=False, batch_size=2)
    alone = [generator(p, max_new_tokens=6, do_sample=False)[0]["generated_text"] for p in prompts]
    assert [o[0]["generated_text"] for o in outputs] == alone  # batched (padded) == one by one
    assert all(text.startswith(p) and len(text) > len(p) for text, p in zip(alone, prompts))


def test_text_classification_pipeline_on_saved_folder(tmp_path, tiny_tokenizer):
    torch.manual_seed(0)
    config = make_tiny_config(num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    model = ScratchGPTForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    classifier = pipeline("text-classification", model=str(tmp_path), device="cpu")
    texts = ["def add(a, b): return a + b", "Hello", "The quick brown fox jumps over the lazy dog."]
    batched = classifier(texts, batch_size=3)
    alone = [classifier(t)[0] for t in texts]
    assert {r["label"] for r in batched} <= {"negative", "positive"}
    for b, a in zip(batched, alone):
        assert b["label"] == a["label"] and b["score"] == pytest.approx(a["score"], abs=1e-5)
    direct = model(**tiny_tokenizer(texts[0], return_tensors="pt")).logits.softmax(-1)[0]
    assert alone[0]["score"] == pytest.approx(direct.max().item(), abs=1e-5)


def test_peft_lora_wraps_the_model():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(make_tiny_config())
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["c_attn", "c_proj", "c_fc"], lora_alpha=8))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    ids = torch.randint(2, 320, (2, 8))
    peft_model(ids, labels=ids).loss.backward()
    out = peft_model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, eos_token_id=None)
    assert out.shape == (2, 11)
