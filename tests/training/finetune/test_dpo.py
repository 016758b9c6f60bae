"""DPO through TRL's DPOTrainer: the loss of one batch against a hand computation, held-out reward accuracy
rising after a short run, LoRA adapters that reload, the three dataset forms, and one-line errors for bad data."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F

import scratch_gpt  # noqa: F401  (registers the Auto classes)
import scratch_gpt_cli
from scratch_gpt import ScratchGPTForCausalLM, run_folder
from tests.scratch_gpt.helpers import fp32_tol, logits_tol
from tests.training.finetune.fixtures import COLORS, make_model_dir, make_tokenizer, write_json
from training.finetune.arguments import DPOArguments, TrainerOptions
from training.finetune.dpo import DPOTask, check_pairs, finetune_dpo, to_trl
from training.finetune.instruct import ALPACA_CHAT_TEMPLATE, format_prompt

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def preference_records(n: int, seed: int = 0) -> list[dict[str, str]]:
    """The book's form, with the book's kind of preference: a polite, correct answer is chosen over a rude one
    with a wrong colour (some records use ``input``)."""
    rng = random.Random(seed)
    things, colours = sorted(COLORS), sorted(set(COLORS.values()))
    records = []
    for i in range(n):
        thing = rng.choice(things)
        wrong = rng.choice([c for c in colours if c != COLORS[thing]])
        instruction, extra = ("Name the colour of the thing.", thing) if i % 3 == 0 else (
            f"What colour is the {thing}?", "")
        records.append({"instruction": instruction, "input": extra, "output": f"The {thing} is {COLORS[thing]}.",
                        "chosen": f"The {thing} is {COLORS[thing]}.",
                        "rejected": f"Whatever, {wrong}. Go look yourself."})
    return records


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny instruct model folder (Alpaca chat template saved, as instruction finetuning leaves it) + data."""
    d = tmp_path_factory.mktemp("dpo")
    records = preference_records(80)
    texts = [format_prompt(r["instruction"], r["input"]) + r["chosen"] + " " + r["rejected"] for r in records]
    tokenizer = make_tokenizer(texts, vocab_size=400)
    tokenizer.chat_template = ALPACA_CHAT_TEMPLATE
    model_dir = make_model_dir(str(d / "model"), tokenizer)
    data = write_json(str(d / "pairs.json"), records)
    return {"dir": d, "model": model_dir, "data": data, "records": records}


def _opts(**overrides) -> TrainerOptions:
    kwargs = dict(epochs=1.0, batch_size=4, learning_rate=1e-3, eval_strategy="no", save_strategy="no",
                  logging_steps=1, use_cpu=True, disable_tqdm=True, seed=0)
    kwargs.update(overrides)
    return TrainerOptions(**kwargs)


def _trainer(setup, tmp_path, loss_type="sigmoid", beta=0.1):
    from transformers import AutoTokenizer

    args = DPOArguments(model=setup["model"], dataset=setup["data"], output_dir=str(tmp_path / "out"),
                        beta=beta, loss_type=loss_type)
    task = DPOTask(args)
    task.load_splits(0)
    tokenizer = AutoTokenizer.from_pretrained(setup["model"])
    task.prepare_tokenizer(tokenizer)
    model = task.build_model(setup["model"], tokenizer, {})
    encoded = task.encode(tokenizer, 128)
    return task.make_trainer(model, tokenizer, _opts(), args.output_dir, encoded), model, tokenizer


def _sequence_logp(model, prompt_ids: list[int], completion_ids: list[int]) -> tuple[torch.Tensor, float]:
    """Sum of log p(completion token | everything before it), written out, and the fp32 rounding bound of that
    sum against another kernel path: per token two logits (:func:`logits_tol`) and a log-sum-exp over the
    vocabulary (:func:`fp32_tol`), growing as sqrt(tokens) over the completion (independent roundings, the model
    fp32_tol itself rests on)."""
    ids = torch.tensor([prompt_ids + completion_ids])
    logits = model(ids, use_cache=False).logits[0, :-1].float()
    logps = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0]
    per_token = 2 * logits_tol(model.config, logits[None]) + fp32_tol(logits.shape[-1])
    return logps[len(prompt_ids) - 1 :].sum(), per_token * len(completion_ids) ** 0.5


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_loss_of_one_batch_equals_a_hand_computation(setup, tmp_path, loss_type):
    trainer, model, _ = _trainer(setup, tmp_path, loss_type=loss_type, beta=0.2)
    reference = trainer.ref_model
    assert reference is not model and all(not p.requires_grad for p in reference.parameters())
    with torch.no_grad():  # move the policy away from the reference so the log-ratios are not zero
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    examples = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator(examples)
    model.train()
    loss = trainer.compute_loss(model, batch)

    model.eval()
    per_pair, bounds = [], []
    with torch.no_grad():
        for ex in examples:
            got = {(m, k): _sequence_logp(net, ex["prompt_ids"], ex[f"{k}_ids"])
                   for m, net in (("policy", model), ("ref", reference)) for k in ("chosen", "rejected")}
            logp = {key: value for key, (value, _) in got.items()}
            err = {k: got["policy", k][1] + got["ref", k][1] for k in ("chosen", "rejected")}  # of each log-ratio
            chosen = logp["policy", "chosen"] - logp["ref", "chosen"]
            rejected = logp["policy", "rejected"] - logp["ref", "rejected"]
            if loss_type == "sigmoid":  # -logsigmoid(0.2 m) moves by at most 0.2 per unit of the margin m
                per_pair.append(-F.logsigmoid(0.2 * (chosen - rejected)))
                bounds.append(0.2 * (err["chosen"] + err["rejected"]))
            else:  # IPO, length-normalised as TRL (and the IPO authors) do; (d - c)^2 moves by 2|d - c| per unit
                delta = chosen / len(ex["chosen_ids"]) - rejected / len(ex["rejected_ids"])
                per_pair.append((delta - 1 / (2 * 0.2)) ** 2)
                d_err = err["chosen"] / len(ex["chosen_ids"]) + err["rejected"] / len(ex["rejected_ids"])
                bounds.append(2 * (abs(delta.item() - 1 / (2 * 0.2)) + d_err) * d_err)
    # the batched (padded, TRL's) and the written-out per-pair computations differ by fp32 rounding only
    torch.testing.assert_close(loss.detach(), torch.stack(per_pair).mean(), atol=max(bounds), rtol=0)


def test_prompt_is_the_models_chat_template(setup, tmp_path):
    trainer, _, tokenizer = _trainer(setup, tmp_path)
    record = setup["records"][0]  # has an input
    example = trainer.train_dataset[0]
    assert tokenizer.decode(example["prompt_ids"]) == format_prompt(record["instruction"], record["input"])
    assert tokenizer.decode(example["chosen_ids"]) == record["chosen"] + tokenizer.eos_token


def test_short_run_raises_held_out_reward_accuracy_and_reports_like_other_tasks(setup, tmp_path):
    out = tmp_path / "dpo"
    args = DPOArguments(model=setup["model"], dataset=setup["data"], output_dir=str(out), validation_fraction=0.25)
    result = finetune_dpo(args, _opts(epochs=2.0, learning_rate=5e-3))
    results = run_folder.load_results(out)
    before, after = results["eval"]["eval_initial_rewards/accuracies"], results["eval"]["eval_rewards/accuracies"]
    assert after > before and after >= 0.9
    assert results["eval"]["eval_rewards/margins"] > results["eval"]["eval_initial_rewards/margins"]
    assert results["eval"]["eval_samples"] == 20 and result.method == "full"
    assert run_folder.load_training_args(out)["dataset_form"] == "book"
    assert ScratchGPTForCausalLM.from_pretrained(out).config.vocab_size > 0
    assert run_folder.has_tokenizer(out) and (out / run_folder.LOSS_PLOT_FILE).exists()


def test_lora_dpo_saves_an_adapter_that_reloads(setup, tmp_path):
    from peft import PeftModel

    out = tmp_path / "lora"
    args = DPOArguments(model=setup["model"], dataset=setup["data"], output_dir=str(out), lora=True)
    result = finetune_dpo(args, _opts(epochs=1.0, learning_rate=5e-3))
    assert result.method == "lora" and run_folder.has_adapter(out) and not run_folder.has_weights(out)
    base = ScratchGPTForCausalLM.from_pretrained(setup["model"]).eval()
    ids = torch.randint(2, 300, (1, 12))
    with torch.no_grad():
        base_logits = base(ids).logits
        reloaded = PeftModel.from_pretrained(ScratchGPTForCausalLM.from_pretrained(setup["model"]), str(out)).eval()
        tuned = reloaded(ids).logits
        with reloaded.disable_adapter():
            torch.testing.assert_close(reloaded(ids).logits, base_logits)  # the reference TRL used
    assert not torch.allclose(tuned, base_logits)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]


def test_standard_and_conversational_forms():
    standard = [{"prompt": "Q: sky?\nA:", "chosen": " blue", "rejected": " red"}]
    assert check_pairs(standard, "s") == "standard"
    assert to_trl(standard[0], "standard", alpaca=True) == standard[0]
    conversation = [{"prompt": [{"role": "user", "content": "sky?"}],
                     "chosen": [{"role": "assistant", "content": "blue"}],
                     "rejected": [{"role": "assistant", "content": "red"}]}]
    assert check_pairs(conversation, "c") == "conversational"
    implicit = [{"chosen": conversation[0]["prompt"] + conversation[0]["chosen"],
                 "rejected": conversation[0]["prompt"] + conversation[0]["rejected"]}]
    assert check_pairs(implicit, "i") == "conversational"
    assert "prompt" not in to_trl(implicit[0], "conversational", alpaca=False)  # TRL extracts the shared turns
    book = {"instruction": "Colour?", "input": "sky", "chosen": "blue", "rejected": "red"}
    assert to_trl(book, "book", alpaca=False)["prompt"] == [{"role": "user", "content": "Colour?\n\nsky"}]
    with pytest.raises(ValueError, match="mixes record forms"):
        check_pairs(standard + [book], "m")


def test_standard_form_trains_through_the_cli(setup, tmp_path, capsys):
    rows = [{"prompt": format_prompt(r["instruction"], r["input"]), "chosen": r["chosen"],
             "rejected": r["rejected"]} for r in setup["records"][:24]]
    data = write_json(str(tmp_path / "standard.json"), rows)
    out = tmp_path / "out"
    code = scratch_gpt_cli.main(["finetune", "dpo", setup["model"], "--dataset", data, "-o", str(out),
                                 "--max-steps", "2", "--batch-size", "4", "--beta", "0.5", "--loss-type", "ipo",
                                 "--use-cpu", "--disable-tqdm", "--save-strategy", "no", "--eval-strategy", "no"])
    assert code == 0, capsys.readouterr().err
    assert run_folder.load_training_args(out)["loss_type"] == "ipo"
    assert "eval_rewards/accuracies" in run_folder.load_results(out)["eval"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda recs: recs[3].pop("chosen"), "record 3 of .* is missing 'chosen'"),
        (lambda recs: recs[5].update(rejected="  "), "record 5 of .* has an empty 'rejected'"),
        (lambda recs: [r.update(rejected=r["chosen"]) for r in recs], "identical 'chosen' and 'rejected'"),
    ],
    ids=["missing-chosen", "empty-rejected", "identical-everywhere"],
)
def test_bad_datasets_get_one_clear_line(setup, tmp_path, capsys, mutate, message):
    import re

    records = [dict(r) for r in setup["records"][:20]]
    mutate(records)
    data = write_json(str(tmp_path / "bad.json"), records)
    capsys.readouterr()
    code = scratch_gpt_cli.main(["finetune", "dpo", setup["model"], "--dataset", data, "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and re.search(message, err), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_a_llama_checkpoint_is_converted_on_the_fly(setup, tmp_path):
    """A transformers LlamaForCausalLM folder is a valid base: converted, tuned, the converted base shipped."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(setup["model"])
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    llama.save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    out = tmp_path / "out"
    args = DPOArguments(model=str(tmp_path / "llama"), dataset=setup["data"], output_dir=str(out), lora=True)
    result = finetune_dpo(args, _opts(max_steps=2))
    assert result.settings["base_model_kind"] == "llama"
    base = ScratchGPTForCausalLM.from_pretrained(out / run_folder.BASE_MODEL_DIR)
    assert base.config.position_embedding_type == "rope" and base.config.num_key_value_heads == 2
    assert run_folder.has_adapter(out)
