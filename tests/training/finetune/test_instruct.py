"""Instruction finetuning: template, chat template, masking collator, truncation, splits, CLI and pipeline."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import scratch_gpt  # noqa: F401  (registers the Auto classes)
import scratch_gpt_cli
from tests.training.finetune.fixtures import color_records, make_model_dir, make_tokenizer, write_json
from scratch_gpt import run_folder
from training.finetune.instruct import (
    ALPACA_CHAT_TEMPLATE,
    IGNORE_INDEX,
    InstructionCollator,
    encode_example,
    encode_records,
    format_prompt,
    split_records,
    validate_records,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def records():
    return color_records(200, seed=0)


@pytest.fixture(scope="module")
def tok(records):
    texts = [format_prompt(r["instruction"], r["input"]) + r["output"] for r in records]
    return make_tokenizer(texts, vocab_size=400)


def test_prompt_is_the_books_alpaca_template():
    assert format_prompt("Do it.", "data") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nDo it.\n\n### Input:\ndata\n\n### Response:\n"
    )
    assert format_prompt("Do it.", "") == format_prompt("Do it.")
    assert "### Input" not in format_prompt("Do it.")


def test_chat_template_renders_exactly_the_training_text(tok):
    import copy

    tok = copy.deepcopy(tok)
    tok.chat_template = ALPACA_CHAT_TEMPLATE
    user = {"role": "user", "content": "What colour is the sky?"}
    assert tok.apply_chat_template([user], tokenize=False, add_generation_prompt=True) == format_prompt(user["content"])
    with_input = {"role": "user", "content": "Name the colour of the thing.", "input": "snow"}
    assert tok.apply_chat_template([with_input], tokenize=False, add_generation_prompt=True) == format_prompt(
        with_input["content"], "snow"
    )
    full = tok.apply_chat_template([user, {"role": "assistant", "content": "The sky is blue."}], tokenize=False)
    assert full == format_prompt(user["content"]) + "The sky is blue." + tok.eos_token
    system = [{"role": "system", "content": "Answer briefly."}, user]
    rendered = tok.apply_chat_template(system, tokenize=False, add_generation_prompt=True)
    assert rendered == format_prompt(user["content"], preamble="Answer briefly.")


def test_collator_masks_prompt_and_padding_exactly(tok, records):
    examples = [encode_example(validate_records([r])[0], tok, max_length=128)[0] for r in records[:5]]
    batch = InstructionCollator(tok.pad_token_id)(examples)
    longest = max(len(e["input_ids"]) for e in examples)
    assert batch["input_ids"].shape == batch["labels"].shape == (5, longest)
    for row, (ex, rec) in enumerate(zip(examples, records[:5])):
        n_prompt = len(tok(format_prompt(rec["instruction"], rec["input"]))["input_ids"])
        n_real = len(ex["input_ids"])
        labels, ids, mask = batch["labels"][row], batch["input_ids"][row], batch["attention_mask"][row]
        expected_mask = torch.tensor([IGNORE_INDEX] * n_prompt)
        assert torch.equal(labels[:n_prompt], expected_mask)  # prompt
        assert torch.equal(labels[n_prompt:n_real], ids[n_prompt:n_real])  # response is learned
        assert (labels[n_prompt:n_real] != IGNORE_INDEX).all()
        assert labels[n_real - 1].item() == tok.eos_token_id  # eos learned, so generation stops
        assert (labels[n_real:] == IGNORE_INDEX).all() and (ids[n_real:] == tok.pad_token_id).all()  # padding
        assert mask.tolist() == [1] * n_real + [0] * (longest - n_real)
        assert tok.decode(ids[n_prompt:n_real], skip_special_tokens=True) == rec["output"]
    # train_on_prompt keeps the prompt labels
    ex, _ = encode_example(validate_records(records[:1])[0], tok, 128, train_on_prompt=True)
    assert ex["labels"] == ex["input_ids"]


def test_over_long_records_are_truncated_with_a_counting_warning(tok, records, caplog):
    recs = validate_records(records[:10])
    long_one = dict(recs[0], output="The sky is blue. " * 40)
    too_long_prompt = dict(recs[1], instruction="What colour is the sky? " * 40)
    limit = max(len(encode_example(r, tok, 10_000)[0]["input_ids"]) for r in recs)  # the others fit exactly
    with caplog.at_level(logging.WARNING, logger="training.finetune.instruct"):
        ds, stats = encode_records([long_one, too_long_prompt, *recs[2:]], tok, max_length=limit)
    assert stats.truncated == 1 and stats.dropped == 1 and len(ds) == 9
    assert max(len(x) for x in ds["input_ids"]) == limit
    assert ds["labels"][0][-1] != tok.eos_token_id  # the cut response has lost its end
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert f"1 of 10 train records were longer than {limit} tokens and were truncated" in messages
    assert "1 of 10 train records were dropped" in messages


def test_split_is_the_books_85_10_5_in_file_order():
    recs = [{"instruction": str(i), "input": "", "output": str(i)} for i in range(1100)]
    parts = split_records(recs)
    assert {k: len(v) for k, v in parts.items()} == {"train": 935, "test": 110, "validation": 55}
    assert parts["train"][0]["instruction"] == "0" and parts["test"][0]["instruction"] == "935"
    assert parts["validation"][0]["instruction"] == "1045"
    shuffled = split_records(recs, shuffle=True, seed=1)
    assert shuffled["train"] != parts["train"] and len(shuffled["train"]) == 935


def test_records_missing_fields_name_the_record_index():
    good = {"instruction": "a", "output": "b"}
    with pytest.raises(ValueError, match=r"record 2 of data.json is missing 'output'"):
        validate_records([good, good, {"instruction": "x", "input": "y"}], "data.json")
    with pytest.raises(ValueError, match=r"record 1 of data.json is missing 'instruction'"):
        validate_records([good, {"output": "x"}], "data.json")
    with pytest.raises(ValueError, match=r"record 0 .* not a string"):
        validate_records([{"instruction": "a", "output": 3}], "data.json")
    assert validate_records([{"instruction": "a", "output": "b", "input": None}])[0]["input"] == ""


def test_dataset_folder_splits_are_used_and_the_missing_one_carved(tmp_path):
    from training.finetune.instruct import complete_splits, load_instruction_records

    recs = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(40)]
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs[:30]))
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs[30:]))
    loaded = load_instruction_records(str(folder))  # the same datasets path a Hub id takes
    assert sorted(loaded) == ["test", "train"]
    splits = complete_splits({k: validate_records(v) for k, v in loaded.items()}, 0.85, 0.10, False, 0)
    assert [r["instruction"] for r in splits["test"]] == [f"q{i}" for i in range(30, 40)]  # kept as given
    # ~5% (round(1.5) = 2) carved off the end of train, nothing lost
    assert [r["instruction"] for r in splits["validation"]] == ["q28", "q29"]
    assert [r["instruction"] for r in splits["train"]] == [f"q{i}" for i in range(28)]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_instruction_records(str(tmp_path / "missing.json"))


# ---------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def cli_instruct(tmp_path_factory, tok, records):
    d = tmp_path_factory.mktemp("instruct")
    make_model_dir(str(d / "base"), tok, hidden=64)
    # a base whose generation config samples, as `scratch-gpt train` writes it
    gen_path = d / "base" / "generation_config.json"
    gen_path.write_text(json.dumps(dict(json.loads(gen_path.read_text()), do_sample=True, temperature=0.8, top_k=50)))
    data = write_json(str(d / "data.json"), records)
    out = d / "out"
    rc = scratch_gpt_cli.main([
        "finetune", "instruct", str(d / "base"), "--dataset", data, "--output-dir", str(out),
        "--epochs", "10", "--learning-rate", "3e-3", "--batch-size", "8", "--weight-decay", "0",
        "--eval-strategy", "no", "--save-strategy", "no", "--seed", "0", "--use-cpu", "--disable-tqdm",
        "--logging-steps", "25", "--max-new-tokens", "16",
    ])
    assert rc == 0
    return out


def test_instruct_loss_falls_and_answers_are_written(cli_instruct, records):
    results = run_folder.load_results(cli_instruct)
    sizes = (results["train"]["train_samples"], results["test"]["test_samples"], results["eval"]["eval_samples"])
    assert sizes == (170, 20, 10)
    assert results["eval"]["eval_loss"] < 0.5 * results["eval"]["eval_initial_loss"], results["eval"]
    train_losses = [r["loss"] for r in run_folder.load_log_history(cli_instruct) if "loss" in r]
    assert train_losses[-1] < 0.5 * train_losses[0]
    answers = json.loads((cli_instruct / "generated_predictions.json").read_text())
    assert results["test"]["test_predictions"] == len(answers) == 20
    assert run_folder.load_training_args(cli_instruct)["method"] == "full"
    assert [a["instruction"] for a in answers] == [r["instruction"] for r in records[170:190]]  # file order
    assert all(isinstance(a["model_response"], str) for a in answers)
    correct = sum(a["model_response"] == a["output"] for a in answers)
    assert correct >= 0.75 * len(answers), answers


def test_saved_instruct_model_serves_chat_messages(cli_instruct):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    model = AutoModelForCausalLM.from_pretrained(cli_instruct)
    tok = AutoTokenizer.from_pretrained(cli_instruct)
    assert type(model).__name__ == "ScratchGPTForCausalLM"
    assert tok.chat_template == ALPACA_CHAT_TEMPLATE and tok.pad_token is not None
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.do_sample is False and model.generation_config.temperature is None

    gen = pipeline("text-generation", model=str(cli_instruct), device="cpu")
    out = gen([{"role": "user", "content": "What colour is the lime?"}], max_new_tokens=16)
    reply = out[0]["generated_text"][-1]
    assert reply["role"] == "assistant"
    assert reply["content"] == "The lime is green."


def test_instruct_refuses_bad_records_and_models(tmp_path, tok, capsys):
    base = make_model_dir(str(tmp_path / "base"), tok)
    bad = write_json(str(tmp_path / "bad.json"), [{"instruction": "a", "output": "b"}, {"instruction": "c"}])
    rc = scratch_gpt_cli.main(["finetune", "instruct", base, "--dataset", bad, "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "record 1" in err and "missing 'output'" in err

    good = write_json(str(tmp_path / "good.json"), [{"instruction": "a", "output": "b"}] * 20)
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    rc = scratch_gpt_cli.main(["finetune", "instruct", str(other), "--dataset", good, "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "'bert'" in err and "scratch-gpt or GPT-2" in err
    assert not (tmp_path / "o").exists()  # refused before anything was written
