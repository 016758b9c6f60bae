"""Tiny tokenizers, models and data sets for the finetuning tests (built in the test, no downloads)."""

from __future__ import annotations

import json
import random

FILLER = (
    "the a cat dog ran sat on mat we you they see saw big small red blue green house tree car road "
    "today later soon happy sad call me back meet at noon lunch work home"
).split()
KEYWORD = "winner"

COLORS = {"apple": "red", "banana": "yellow", "grape": "purple", "lime": "green", "sky": "blue", "snow": "white"}


def keyword_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Texts of filler words; label ``spam`` when the keyword appears, else ``ham`` (balanced)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(4, 10))]
        spam = i % 2 == 0
        if spam:
            words.insert(rng.randint(0, len(words)), KEYWORD)
        rows.append({"text": " ".join(words), "label": "spam" if spam else "ham"})
    rng.shuffle(rows)
    return rows


def write_sms(path: str, rows: list[dict[str, str]]) -> str:
    """Write rows in the SMS Spam Collection format (``label<TAB>text``)."""
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(f"{r['label']}\t{r['text']}\n")
    return path


def color_records(n: int, seed: int = 0) -> list[dict[str, str]]:
    """A synthetic instruction mapping: the colour of a thing (some records use the ``input`` field)."""
    rng = random.Random(seed)
    things = sorted(COLORS)
    recs = []
    for i in range(n):
        thing = rng.choice(things)
        if i % 3 == 0:
            recs.append({"instruction": "Name the colour of the thing.", "input": thing,
                         "output": f"The {thing} is {COLORS[thing]}."})
        else:
            recs.append({"instruction": f"What colour is the {thing}?", "input": "",
                         "output": f"The {thing} is {COLORS[thing]}."})
    return recs


def write_json(path: str, obj) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh)
    return path


def make_tokenizer(texts: list[str], vocab_size: int = 400, model_max_length: int = 128):
    """A byte-level BPE trained by the project's tokenizer trainer on ``texts``."""
    from training.data.tokenizer import train_tokenizer

    return train_tokenizer(texts, vocab_size=vocab_size, min_frequency=1, model_max_length=model_max_length)


def make_model_dir(path: str, tokenizer, hidden: int = 32, layers: int = 2, heads: int = 2, context: int = 128,
                   seed: int = 0) -> str:
    """Save a randomly initialised tiny ScratchGPTForCausalLM plus ``tokenizer`` to ``path``."""
    import torch

    from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM

    torch.manual_seed(seed)
    cfg = ScratchGPTConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        max_position_embeddings=context, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    ScratchGPTForCausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_gpt2_dir(path: str, tokenizer, hidden: int = 32, layers: int = 2, heads: int = 2, context: int = 128,
                  seed: int = 0) -> str:
    """Save a randomly initialised tiny transformers GPT2LMHeadModel (+ tokenizer) to ``path``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_embd=hidden, n_layer=layers, n_head=heads, n_positions=context,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def fast_options(**overrides):
    """Trainer options for seconds-long CPU runs in tests."""
    from training.finetune.arguments import TrainerOptions

    kw = dict(epochs=1.0, learning_rate=3e-3, batch_size=16, warmup=0, weight_decay=0.0, eval_strategy="no",
              save_strategy="no", logging_steps=5, seed=0, use_cpu=True, disable_tqdm=True)
    kw.update(overrides)
    return TrainerOptions(**kw)
