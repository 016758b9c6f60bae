"""Continuous batching vs generate(): aggregate generated tokens/s for concurrent requests of mixed lengths.

Three ways to serve the same requests (greedy, the same number of new tokens each) with ScratchGPTForCausalLM:
- ``continuous_batching``: transformers' continuous-batching manager (``model.init_continuous_batching()``,
  paged KV cache, requests packed into one row per step), started once as a server would be; timed from adding
  the requests until every result is back;
- ``generate_batch``: ``model.generate_batch(...)``, the same engine started and stopped inside the call;
- ``one_by_one``: ``generate()`` per request;
- ``padded_batch``: one left-padded batched ``generate()``.
Measured in one process, interleaved, medians over repetitions; continuous batching's tokens are checked
against ``generate()``'s. Prints one JSON object.

    python benchmarks/bench_continuous_batching.py
    python benchmarks/bench_continuous_batching.py --requests 4 --new-tokens 8 --reps 1   # smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

SHAPES = {"tiny": dict(n_layer=4, n_head=4, n_embd=256, n_positions=256, vocab_size=8192)}
PROMPT_LENGTHS = (8, 96, 24, 64, 12, 128, 40, 16)  # cycled over the requests


def build_model(shape: str):
    from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM

    torch.manual_seed(0)
    return ScratchGPTForCausalLM(ScratchGPTConfig(**SHAPES[shape])).eval()


def make_prompts(requests: int, vocab: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(0)
    lengths = [PROMPT_LENGTHS[i % len(PROMPT_LENGTHS)] for i in range(requests)]
    return [torch.randint(2, vocab, (n,), generator=generator).tolist() for n in lengths]


def generation_config(new_tokens: int):
    from transformers import GenerationConfig

    return GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)


def cb_config(prompts: list[list[int]], new_tokens: int):
    """A cache sized for these requests (left to itself, continuous batching sizes it from free memory)."""
    from transformers import ContinuousBatchingConfig

    page = 32
    blocks = sum(-(-(len(p) + new_tokens) // page) for p in prompts) + 8
    return ContinuousBatchingConfig(page_size=page, num_blocks=blocks, max_batch_tokens=512)


def one_by_one(model, prompts, new_tokens) -> list[list[int]]:
    config = generation_config(new_tokens)
    outputs = []
    for prompt in prompts:
        out = model.generate(torch.tensor([prompt]), generation_config=config)
        outputs.append(out[0, len(prompt) :].tolist())
    return outputs


def padded_batch(model, prompts, new_tokens) -> list[list[int]]:
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt) :] = torch.tensor(prompt)
        mask[i, width - len(prompt) :] = 1
    out = model.generate(ids, attention_mask=mask, generation_config=generation_config(new_tokens))
    return out[:, width:].tolist()


def generate_batch(model, prompts, new_tokens) -> list[list[int]]:
    results = model.generate_batch(
        inputs=prompts,
        generation_config=generation_config(new_tokens),
        continuous_batching_config=cb_config(prompts, new_tokens),
    )
    return [results[f"req_{i}"].generated_tokens for i in range(len(prompts))]


class Server:
    """transformers' continuous-batching manager, started once, serving each call's requests concurrently."""

    def __init__(self, model, prompts, new_tokens):
        self.new_tokens = new_tokens
        self.manager = model.init_continuous_batching(
            generation_config=generation_config(new_tokens),
            continuous_batching_config=cb_config(prompts, new_tokens),
        )
        self.manager.start()

    def __call__(self, model, prompts, new_tokens) -> list[list[int]]:
        ids = [self.manager.add_request(p, max_new_tokens=new_tokens) for p in prompts]
        results = {rid: self.manager.get_result(request_id=rid, timeout=600) for rid in ids}
        return [results[rid].generated_tokens for rid in ids]

    def stop(self) -> None:
        self.manager.stop(block=True, timeout=60)


def timed(fn, model, prompts, new_tokens) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    tokens = fn(model, prompts, new_tokens)
    return time.perf_counter() - start, tokens


def run(model, prompts, new_tokens: int, reps: int) -> dict:
    server = Server(model, prompts, new_tokens)
    ways = {
        "continuous_batching": server,
        "generate_batch": generate_batch,
        "one_by_one": one_by_one,
        "padded_batch": padded_batch,
    }
    try:
        for fn in ways.values():  # warm-up (and the tokens to compare)
            fn(model, prompts[:2], 2)
        times = {name: [] for name in ways}
        tokens = {}
        for rep in range(reps):
            order = list(ways) if rep % 2 == 0 else list(reversed(ways))
            for name in order:
                seconds, tokens[name] = timed(ways[name], model, prompts, new_tokens)
                times[name].append(seconds)
    finally:
        server.stop()
    return {"times": times, "tokens": tokens}


def summarise(result: dict, prompts, new_tokens: int) -> dict:
    generated = len(prompts) * new_tokens
    rates = {name: generated / statistics.median(t) for name, t in result["times"].items()}
    reference = result["tokens"]["one_by_one"]
    return {
        "tokens_per_s": {name: round(rate, 1) for name, rate in rates.items()},
        "median_s": {name: round(statistics.median(t), 3) for name, t in result["times"].items()},
        "cb_vs_one_by_one": round(rates["continuous_batching"] / rates["one_by_one"], 2),
        "cb_vs_padded_batch": round(rates["continuous_batching"] / rates["padded_batch"], 2),
        "generate_batch_vs_one_by_one": round(rates["generate_batch"] / rates["one_by_one"], 2),
        "cb_tokens_equal_generate": result["tokens"]["continuous_batching"] == reference,
        "generate_batch_tokens_equal_generate": result["tokens"]["generate_batch"] == reference,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny", help="model shape")
    parser.add_argument("--requests", type=int, default=16, help="concurrent requests")
    parser.add_argument("--new-tokens", type=int, default=32, help="new tokens per request (greedy)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    args = parser.parse_args()
    model = build_model(args.shape)
    prompts = make_prompts(args.requests, model.config.vocab_size)
    with torch.inference_mode():
        result = run(model, prompts, args.new_tokens, args.reps)
    report = {
        "shape": args.shape,
        "requests": args.requests,
        "prompt_lengths": [len(p) for p in prompts],
        "new_tokens": args.new_tokens,
        "threads": torch.get_num_threads(),
        **summarise(result, prompts, args.new_tokens),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
