"""`scratch-gpt generate`: sample text from a trained model folder (or Hub id), streaming to the terminal."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.shared.arguments import add_command, arg


@dataclass
class GenerateArguments:
    """How ``generate`` samples (every field a ``--flag``)."""

    _argument_group_name = "generation"

    prompt: str = field(default="", metadata={"help": "text to continue (empty: start from <|endoftext|>)"})
    max_new_tokens: int = field(default=100, metadata={"help": "tokens to generate per sample"})
    temperature: float = field(default=0.8, metadata={"help": "sampling temperature; 0 means greedy"})
    top_k: int = field(default=50, metadata={"help": "sample from the k most likely tokens; 0 = all"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling probability mass (1.0 = off)"})
    num_samples: int = field(default=1, metadata={"help": "number of continuations"})
    seed: int = field(default=0, metadata={"help": "random seed; sample i uses seed+i"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:1, ... (auto: cuda when available)"})
    no_stream: bool = field(default=False, metadata={"help": "print each sample when it is complete"})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "allow model code from the folder/repo (exported models)"})
    dtype: str = field(default="fp32", metadata={"choices": ("fp32", "bf16", "int8"), "help": (
        "weights precision: bf16 where the CPU has bf16 units (else fp32 with a warning), int8 quantized "
        "linear layers on CPU")})


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``generate``."""
    add_command(
        subparsers, "generate", cmd_generate, parts=(GenerateArguments,),
        arguments=[arg("model", metavar="MODEL", help="model folder (e.g. runs/tiny) or Hub id")],
        help="Sample text from a trained model folder (or Hub id), streaming tokens to the terminal.",
        description="Generate continuations of a prompt with a causal LM saved by save_pretrained.",
    )


def _check_generate_args(ns: argparse.Namespace) -> None:
    if ns.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {ns.max_new_tokens}")
    if ns.temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {ns.temperature}")
    if ns.top_k < 0:
        raise ValueError(f"--top-k must be >= 0, got {ns.top_k}")
    if not 0 < ns.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {ns.top_p}")
    if ns.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {ns.num_samples}")


_LM_ARCH_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def check_device(device: str) -> None:
    """RuntimeError naming --device when it asks for CUDA that this machine does not have."""
    import torch

    if not device.startswith("cuda"):
        return
    index = int(device.split(":", 1)[1]) if ":" in device and device.split(":", 1)[1].isdigit() else 0
    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        raise RuntimeError(f"--device {device}: no such CUDA device on this machine (CUDA devices: "
                           f"{torch.cuda.device_count() if torch.cuda.is_available() else 0})")


def check_model_source(model: str) -> None:
    """A local MODEL must be a folder with config.json of a causal LM and a tokenizer; errors name it."""
    from scratch_gpt import run_folder

    path = Path(model).expanduser()
    hint = "pass a folder written by `scratch-gpt train`, `finetune instruct` or `convert-gpt2`, or a Hub id"
    if not path.exists():
        if model.startswith((".", "/", "~")) or model.count("/") > 1:
            raise FileNotFoundError(f"model folder {model} does not exist; {hint}")
        return  # a Hub id
    if not run_folder.has_config(path):
        raise ValueError(f"{model} has no config.json, so it is not a model folder; {hint}")
    config = run_folder.read_json(path, run_folder.CONFIG_FILE, {})
    archs = config.get("architectures") or [] if isinstance(config, dict) else []
    if archs and not any(str(a).endswith(_LM_ARCH_SUFFIXES) for a in archs):
        raise ValueError(f"{model} holds a {archs[0]} (model_type {config.get('model_type')!r}), not a causal "
                         f"language model, so it cannot generate text; {hint}")
    if not run_folder.has_tokenizer(path):
        raise ValueError(f"{model} has no tokenizer files; copy the tokenizer it was trained with into it "
                         "(tokenizer.json, tokenizer_config.json)")


def cmd_generate(ns: argparse.Namespace) -> int:
    _check_generate_args(ns)
    import torch
    from transformers import AutoTokenizer, TextStreamer

    import scratch_gpt  # noqa: F401  (registers the architecture with the Auto classes)

    from .precision import load_for_generation

    device = ns.device if ns.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device)
    check_model_source(ns.model)
    tokenizer = AutoTokenizer.from_pretrained(ns.model, trust_remote_code=ns.trust_remote_code)
    model = load_for_generation(ns.model, ns.dtype, device, trust_remote_code=ns.trust_remote_code)
    model.eval()
    vocab = getattr(model.config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise ValueError(f"the tokenizer of {ns.model} has {len(tokenizer)} tokens but the model embeds only {vocab}; "
                         "put the tokenizer the model was trained with beside it")
    ids = tokenizer(ns.prompt, return_tensors="pt").input_ids if ns.prompt else None
    if ids is None or ids.shape[1] == 0:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = torch.tensor([[start]])
    ids = ids.to(device)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and ids.shape[1] + ns.max_new_tokens > limit:
        raise ValueError(
            f"prompt ({ids.shape[1]} tokens) + --max-new-tokens {ns.max_new_tokens} exceeds the model's context "
            f"of {limit} tokens; shorten the prompt or lower --max-new-tokens"
        )
    sampling = ns.temperature > 0
    kwargs: dict[str, Any] = {
        "max_new_tokens": ns.max_new_tokens,
        "do_sample": sampling,
        "attention_mask": torch.ones_like(ids),
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    }
    if sampling:
        kwargs.update(temperature=ns.temperature, top_k=ns.top_k, top_p=ns.top_p)
    else:
        kwargs.update(temperature=None, top_k=None, top_p=None)
    for i in range(ns.num_samples):
        if ns.num_samples > 1:
            print(f"--- sample {i + 1} ---", flush=True)
        torch.manual_seed(ns.seed + i)
        streamer = None if ns.no_stream else TextStreamer(tokenizer, skip_special_tokens=True)
        with torch.no_grad():
            out = model.generate(ids, streamer=streamer, **kwargs)
        if ns.no_stream:
            print(tokenizer.decode(out[0], skip_special_tokens=True), flush=True)
    return 0
