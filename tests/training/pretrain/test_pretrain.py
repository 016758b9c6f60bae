"""In-process tests of the pretraining loop, its presets and the train command (tiny models, seconds)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from datasets import Dataset, DatasetDict

from tests.training.pretrain.helpers import make_blocks, make_tokenizer, tiny_args
from training.pretrain.arguments import PRESETS, coerce_value, parse_duration, resolve_arguments
from scratch_gpt import run_folder
from training.pretrain.checkpoints import list_checkpoints
from training.pretrain.loop import TrainingDivergedError, train
from training.pretrain.setup import build_model, lr_multiplier, param_groups, total_steps_for

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One short complete run shared by the output checks (eval + samples + checkpoints on)."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    args = tiny_args(out, max_steps=8, eval_every=4, checkpoint_every=4, num_samples=2, sample_max_new_tokens=6)
    torch.set_num_threads(1)
    return train(args, datasets=make_blocks(), tokenizer=make_tokenizer()).run_dir


def _losses(run_dir):
    return [r["loss"] for r in run_folder.load_log_history(run_dir) if "loss" in r]


# ---------------------------------------------------------------------------------------------- pure pieces


def test_lr_schedule_warmup_then_cosine_to_floor():
    warm, total, floor = 10, 110, 0.1
    lrs = [lr_multiplier(s, warm, total, floor) for s in range(total + 20)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warmup
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:total], lrs[11 : total + 1]))  # monotone decay
    assert lrs[60] == pytest.approx(floor + (1 - floor) * 0.5)  # half way: cosine midpoint
    assert lrs[total] == pytest.approx(floor) and lrs[-1] == pytest.approx(floor)  # stays at the floor


def test_param_groups_exclude_norms_biases_embeddings():
    model = build_model(tiny_args("unused"), make_tokenizer())
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed and all(n.endswith(".weight") and ("c_attn" in n or "c_proj" in n or "c_fc" in n) for n in decayed)
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert "transformer.wte.weight" in skipped and "transformer.wpe.weight" in skipped
    assert any("ln_1" in n for n in skipped) and any(n.endswith(".bias") for n in skipped)
    # every trainable parameter exactly once (the tied LM head is the embedding)
    n_unique = len({id(p) for p in model.parameters()})
    assert len(decay["params"]) + len(no_decay["params"]) == n_unique


def test_stop_by_tokens_sets_steps():
    args = tiny_args("unused", max_steps=1000, max_tokens=2560)
    assert total_steps_for(args, tokens_per_step=256) == 10
    assert total_steps_for(tiny_args("unused", max_steps=5, max_tokens=10**9), 256) == 5


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds(name):
    args = resolve_arguments(preset=name)
    assert args.preset == name
    tok = make_tokenizer()
    with torch.device("meta"):  # shapes only: the 124M preset costs nothing to build
        model = build_model(args, tok)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.max_position_embeddings) == (
        args.hidden_size, args.num_hidden_layers, args.block_size,
    )
    assert args.dropout == 0.0 and cfg.resid_dropout == 0.0  # pretraining presets default to no dropout
    if name == "gpt2-124m":
        body = sum(p.numel() for n, p in model.named_parameters() if "wte" not in n)
        assert body + 50257 * 768 == pytest.approx(124.4e6, rel=0.01)


def test_precedence_preset_file_flags(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("preset: small\nlearning-rate: 5.0e-4\nmax_steps: 77\n")
    args = resolve_arguments(config_file=cfg, overrides={"max_steps": 9})
    assert args.preset == "small" and args.hidden_size == PRESETS["small"]["hidden_size"]
    assert args.learning_rate == 5e-4 and args.max_steps == 9
    js = tmp_path / "run.json"
    js.write_text(json.dumps({"hidden_size": 64, "num_attention_heads": 4}))
    assert resolve_arguments(config_file=js).hidden_size == 64


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"learning_rate": -1}, "--learning-rate"),
        ({"hidden_size": 30, "num_attention_heads": 4}, "not divisible"),
        ({"mixed_precision": "fp8"}, "--mixed-precision"),
        ({"max_time": "ten minutes"}, "--max-time"),
        ({"per_device_batch_size": 0}, "--per-device-batch-size"),
        ({"preset": "huge"}, "unknown preset"),
        ({"learning_rat": 1e-3}, "did you mean learning_rate"),
        ({"max_steps": "many"}, "expects int"),
    ],
)
def test_bad_values_rejected_with_named_option(overrides, needle):
    with pytest.raises(ValueError, match=needle):
        resolve_arguments(overrides=overrides)


def test_coercion_and_durations():
    assert coerce_value("max_tokens", "1e6") == 1_000_000
    assert coerce_value("resume", "yes") is True and coerce_value("eval_batches", "none") is None
    assert parse_duration("90s") == 90 and parse_duration("10m") == 600 and parse_duration("1.5h") == 5400


def test_bad_option_fails_before_any_work(tmp_path, capsys):
    from scratch_gpt_cli import main

    out = tmp_path / "never"
    assert main(["train", "--output-dir", str(out), "--num-attention-heads", "3"]) != 0  # exit codes: issue 11
    assert "not divisible" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: wrong type for the flag
        main(["train", "--output-dir", str(out), "--max-steps", "lots"])
    assert not out.exists()


def test_existing_run_needs_resume_or_overwrite(finished_run):
    args = tiny_args(finished_run)
    with pytest.raises(FileExistsError, match="--resume"):
        train(args, datasets=make_blocks(), tokenizer=make_tokenizer())


def test_resume_needs_a_checkpoint_in_a_busy_folder(tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "model.safetensors").write_bytes(b"someone's model")
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        train(tiny_args(busy, resume=True), datasets=make_blocks(), tokenizer=make_tokenizer())
    assert (busy / "model.safetensors").read_bytes() == b"someone's model"
    fresh = train(tiny_args(tmp_path / "fresh", resume=True, max_steps=1), datasets=make_blocks(),
                  tokenizer=make_tokenizer())  # nothing to resume yet: a first run starts
    assert fresh.metrics["global_step"] == 1


def test_overwrite_replaces_a_run_only_after_the_data_is_checked(finished_run, tmp_path):
    before = (finished_run / "model.safetensors").read_bytes()
    args = tiny_args(finished_run, overwrite=True, dataset=str(tmp_path / "typo"), tokenizer=None)
    with pytest.raises((FileNotFoundError, ValueError)):
        train(args)
    assert (finished_run / "model.safetensors").read_bytes() == before
    (tmp_path / "corpus.txt").write_text("def f():\n    return 1\n" * 50)
    with pytest.raises(ValueError, match="destroy the input"):
        train(tiny_args(tmp_path, overwrite=True, dataset=str(tmp_path / "corpus.txt")))
    assert (tmp_path / "corpus.txt").is_file()


def test_print_config_shows_resolved_options(capsys):
    from scratch_gpt_cli import main

    assert main(["train", "--preset", "small", "--learning-rate", "1e-4", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "learning_rate: 0.0001" in text and "hidden_size: 256" in text


def test_flags_keep_their_spellings_and_values(capsys):
    """HfArgumentParser flags: kebab and snake case, --no-FLAG, 1e3 / none for numbers, presets still layered."""
    from scratch_gpt_cli import main

    argv = ["train", "--preset", "small", "--max-steps", "1e3", "--eval_batches", "none", "--compile", "--no-compile",
            "--per-device-batch-size", "4", "--print-config"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    for line in ("max_steps: 1000", "eval_batches: null", "compile: false", "per_device_batch_size: 4",
                 "hidden_size: 256"):
        assert line in text.splitlines(), line


# ---------------------------------------------------------------------------------------------- the loop


def test_overfits_one_batch(tmp_path):
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(2, len(make_tokenizer()), (8, 32), generator=g).tolist()  # 256 random tokens
    batch = Dataset.from_dict({"input_ids": rows})
    args = tiny_args(
        tmp_path / "of", hidden_size=64, max_steps=120, learning_rate=1e-2, warmup_steps=10,
        weight_decay=0.0, min_lr_ratio=1.0, log_every=5, max_epochs=0,  # 120 epochs on purpose: no cap
    )
    out = train(args, datasets=DatasetDict(train=batch, validation=batch), tokenizer=make_tokenizer())
    losses = _losses(out.run_dir)
    assert losses[0] > 4.0  # ~ln(vocab) at the start: nothing learned yet
    assert losses[-1] < 0.5
    assert out.metrics["eval_loss"] < 0.5
    assert run_folder.load_results(out.run_dir)["eval"]["eval_loss"] == out.metrics["eval_loss"]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    args = tiny_args(tmp_path / "nan", max_steps=12, checkpoint_every=3, debug_nan_step=8)
    with pytest.raises(TrainingDivergedError, match=r"at step 8\b") as err:
        train(args, datasets=make_blocks(), tokenizer=make_tokenizer())
    assert "checkpoint-00000006" in str(err.value)
    steps = [s for s, _ in list_checkpoints(tmp_path / "nan")]
    assert steps == [3, 6]  # keep_checkpoints=2; nothing after the NaN
    assert not (tmp_path / "nan" / "model.safetensors").exists()  # no final model from a diverged run
    records = run_folder.load_log_history(tmp_path / "nan")
    assert max(r["step"] for r in records) == 7 and all(math.isfinite(r["loss"]) for r in records)


class _Interrupted(Exception):
    """Stands in for a crash between checkpoints."""


def _stop_at(step):
    def fn(s, record):
        if s == step:
            raise _Interrupted

    return fn


def _assert_same_weights(dir_a, dir_b, atol=1e-6):
    from safetensors.torch import load_file

    a, b = load_file(str(dir_a / "model.safetensors")), load_file(str(dir_b / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


def test_max_time_stops_early(tmp_path):
    out = train(tiny_args(tmp_path / "t", max_steps=10_000, max_time="0.01s"),
                datasets=make_blocks(), tokenizer=make_tokenizer())
    results = run_folder.load_results(out.run_dir)["train"]
    assert results["global_step"] == out.metrics["global_step"] < 10_000
    assert (out.run_dir / "model.safetensors").is_file()


def test_gradient_accumulation_matches_large_batch(tmp_path):
    blocks, tok = make_blocks(), make_tokenizer()
    big = train(tiny_args(tmp_path / "big", max_steps=4, per_device_batch_size=8), datasets=blocks, tokenizer=tok).run_dir
    acc = train(tiny_args(tmp_path / "acc", max_steps=4, per_device_batch_size=4, gradient_accumulation_steps=2),
                datasets=blocks, tokenizer=tok).run_dir
    losses = [_losses(d) for d in (big, acc)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    _assert_same_weights(big, acc, atol=1e-5)


# ---------------------------------------------------------------------------------------------- outputs


def test_run_dir_loads_with_auto_classes_and_pipeline(finished_run):
    import scratch_gpt  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    model = AutoModelForCausalLM.from_pretrained(finished_run)
    tok = AutoTokenizer.from_pretrained(finished_run)
    assert model.config.model_type == "scratch_gpt" and model.config.vocab_size == len(tok)
    assert model.generation_config.eos_token_id == tok.eos_token_id
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    text = pipe("def f", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert text.startswith("def f") and len(tok(text).input_ids) > len(tok("def f").input_ids)


def test_log_history_results_and_plot(finished_run):
    records = run_folder.load_log_history(finished_run)
    train_steps = [r["step"] for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    assert train_steps == list(range(1, 9))
    assert [r["step"] for r in evals] == [4, 8]
    assert all(r["eval_perplexity"] == pytest.approx(math.exp(r["eval_loss"]), rel=1e-6) for r in evals)
    assert {"learning_rate", "tokens_per_second", "num_input_tokens_seen", "grad_norm"} <= set(records[0])
    assert "muon_learning_rate" not in records[0]  # AdamW alone (test_muon checks a Muon run's)
    results = run_folder.load_results(finished_run)
    assert results["eval"]["eval_loss"] == evals[-1]["eval_loss"]
    assert results["train"]["global_step"] == 8 and results["train"]["num_input_tokens_seen"] == 8 * 8 * 32
    assert results["train"]["train_loss"] == pytest.approx(sum(_losses(finished_run)) / 8)
    all_results = json.loads((finished_run / "all_results.json").read_text())
    assert all_results == {**results["train"], **results["eval"]}
    assert run_folder.load_training_args(finished_run)["max_steps"] == 8
    png = (finished_run / "loss.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    import matplotlib.image

    assert matplotlib.image.imread(finished_run / "loss.png").shape[:2] == (420, 700)
    steps = [s for s, _ in list_checkpoints(finished_run)]
    assert steps == [4, 8]
    state = json.loads((finished_run / "checkpoints" / "checkpoint-00000008" / "trainer_state.json").read_text())
    assert state["step"] == 8 and state["tokens"] == 8 * 8 * 32


def test_cli_train_on_a_local_corpus_then_resume(tmp_path, capsys):
    """The real path: files -> tokenizer -> blocks -> loop -> run folder, through `scratch-gpt train`."""
    from scratch_gpt_cli import main

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"m{i}.py").write_text(
            "".join(f"def f_{i}_{j}(x, y={j}):\n    return x * y + {i}\n\n" for j in range(40))
        )
    out = tmp_path / "run"
    flags = ["train", "--dataset", str(corpus), "--validation-fraction", "0.25", "--vocab-size", "300",
             "--hidden-size", "32", "--num-hidden-layers", "1", "--num-attention-heads", "2", "--block-size", "32",
             "--per-device-batch-size", "4", "--max-steps", "2", "--num-samples", "0", "--eval-batches", "1",
             "--log-every", "1",
             "--output-dir", str(out), "--no-malloc-tuning"]
    assert main(flags) == 0
    printed = capsys.readouterr().out
    assert "validation loss" in printed and "done: 2 steps" in printed
    saved = json.loads((out / "training_args.json").read_text())
    assert saved["dataset"] == str(corpus) and saved["max_steps"] == 2
    tokenizer_json = (out / "tokenizer.json").read_text()
    # a longer schedule continues from the step-2 checkpoint with the run's own tokenizer
    assert main([*flags[:-3], "--max-steps", "3", "--output-dir", str(out), "--resume", "--no-malloc-tuning"]) == 0
    assert (out / "tokenizer.json").read_text() == tokenizer_json
    steps = [r["step"] for r in run_folder.load_log_history(out) if "loss" in r]
    assert steps == [1, 2, 3]
    assert [s for s, _ in list_checkpoints(out)] == [2, 3]


def test_train_reexecs_once_with_allocator_variables(monkeypatch):
    import argparse

    from training.pretrain import commands as commands_train

    calls = []
    monkeypatch.setattr(commands_train.os, "execve", lambda exe, argv, env: calls.append((argv, env)))
    for key in (*commands_train.MALLOC_ENV, "SCRATCH_GPT_REEXECED", "SCRATCH_GPT_MALLOC_TUNING"):
        monkeypatch.delenv(key, raising=False)
    ns = argparse.Namespace(no_malloc_tuning=False, print_config=False)
    monkeypatch.setattr(commands_train.sys, "argv", ["/usr/bin/scratch-gpt", "train", "--max-steps", "5"])
    commands_train._maybe_reexec_with_malloc_tuning(ns)
    (argv, env), = calls
    assert argv[1] == "-c" and argv[3:] == ["train", "--max-steps", "5"]  # not `-m`: no cwd on sys.path
    assert env["MALLOC_MMAP_MAX_"] == "0" and env["MALLOC_TRIM_THRESHOLD_"] == "100000000000"
    # opted out, already tuned, or not the CLI process: no re-exec
    commands_train._maybe_reexec_with_malloc_tuning(argparse.Namespace(no_malloc_tuning=True, print_config=False))
    monkeypatch.setenv("SCRATCH_GPT_REEXECED", "1")
    commands_train._maybe_reexec_with_malloc_tuning(ns)
    monkeypatch.delenv("SCRATCH_GPT_REEXECED")
    monkeypatch.setattr(commands_train.sys, "argv", ["pytest", "train"])
    commands_train._maybe_reexec_with_malloc_tuning(ns)
    assert len(calls) == 1


def test_streaming_blocks_train_and_resume_exactly(tmp_path):
    """An IterableDataset (what --streaming produces): shuffle buffer per epoch, resume from the stream position."""
    blocks, tok = make_blocks(n_train=48), make_tokenizer()  # 6 batches per epoch: 14 steps cross two epochs
    stream = DatasetDict(
        train=blocks["train"].to_iterable_dataset(num_shards=4), validation=blocks["validation"].to_iterable_dataset()
    )
    common = dict(max_steps=14, checkpoint_every=4)
    full = train(tiny_args(tmp_path / "full", **common), datasets=stream, tokenizer=tok).run_dir
    part = tmp_path / "part"
    with pytest.raises(_Interrupted):
        train(tiny_args(part, **common), datasets=stream, tokenizer=tok, callbacks=[_stop_at(10)])
    state = json.loads((part / "checkpoints" / "checkpoint-00000008" / "trainer_state.json").read_text())
    assert (state["data_epoch"], state["data_index"]) == (1, 2)
    train(tiny_args(part, resume=True, **common), datasets=stream, tokenizer=tok)
    _assert_same_weights(full, part)
    losses = [_losses(d) for d in (full, part)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6) and len(losses[0]) == 14


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "no")])
def test_mixed_precision_auto_is_bf16_only_where_the_cpu_computes_it(monkeypatch, native, expected):
    from training.pretrain.setup import resolve_mixed_precision
    from training.shared import hardware

    monkeypatch.setattr(hardware, "cpu_has_bf16_units", lambda: native)
    assert resolve_arguments().mixed_precision == "auto"  # the default
    assert resolve_mixed_precision("auto", has_accelerator=False) == expected
    assert resolve_mixed_precision("no", has_accelerator=False) == "no"
    assert resolve_mixed_precision("bf16", has_accelerator=False) == "bf16"


def test_mixed_precision_auto_trains_under_bf16_autocast_on_a_bf16_cpu(monkeypatch, tmp_path):
    """With bf16 units (forced), `auto` runs the forward under CPU bf16 autocast; the weights stay fp32."""
    from training.shared import hardware

    monkeypatch.setattr(hardware, "cpu_has_bf16_units", lambda: True)
    seen = []
    original = torch.nn.Embedding.forward

    def spy(self, ids):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return original(self, ids)

    monkeypatch.setattr(torch.nn.Embedding, "forward", spy)
    train(tiny_args(tmp_path / "fp32", max_steps=1), datasets=make_blocks(), tokenizer=make_tokenizer())
    assert seen and not any(seen)  # `no`: fp32
    seen.clear()  # a second run in the same process may change the precision (Accelerate's state is reset)
    out = train(tiny_args(tmp_path / "run", mixed_precision="auto", max_steps=2), datasets=make_blocks(),
                tokenizer=make_tokenizer())
    assert seen and all(seen)
    assert json.loads((out.run_dir / "config.json").read_text()).get("dtype", "float32") == "float32"


def test_fused_adamw_where_torch_has_the_kernel_and_it_steps_like_the_default():
    """The loop's AdamW is fused on CPU/CUDA (one pass per tensor, no temporaries) and takes the same step as
    torch's default implementation up to float rounding; elsewhere it is the default."""
    from training.pretrain.setup import fused_adamw

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))
    assert fused_adamw(torch.device("cpu"), model) == {"fused": True}
    assert fused_adamw("cuda", model) == {"fused": True}
    assert fused_adamw("xla", model) == {} and fused_adamw("meta", model) == {}
    twin = copy.deepcopy(model)
    x = torch.randn(32, 8)
    for net, options in ((model, fused_adamw("cpu", model)), (twin, {})):
        opt = torch.optim.AdamW(net.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, **options)
        for _ in range(3):
            net(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
