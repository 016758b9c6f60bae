"""`scratch-gpt export` and `scratch-gpt push`.

Options are declared once, as dataclasses (:class:`ExportOptions`, :class:`hub_export.card.CardOptions`,
:class:`PushOptions`), and parsed through transformers' ``HfArgumentParser`` like every other command; the
positional folders are added by hand. Heavy imports (torch, huggingface_hub) happen inside the command functions.

``--format`` dispatches in :func:`_run_export`: the Hub-repo formats of :data:`hub_export.export.FORMATS` go
through :func:`hub_export.export.export_model`; a format with a writer of its own is one more entry of
:data:`EXPORT_FORMATS`, one more branch there, and its options are more fields (or ``add_argument`` calls in
:func:`_register_export`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from .card import CardOptions

# --format value -> help text (keep in step with hub_export.export.FORMATS, which is not imported for --help).
EXPORT_FORMATS = {
    "remote-code": "our modeling files + auto_map, loads with trust_remote_code=True (default)",
    "gpt2": "plain GPT-2 repo loadable by GPT2LMHeadModel, refused for configs GPT-2 cannot express",
    "llama": "plain Llama repo loadable by LlamaForCausalLM (RoPE/RMSNorm/SwiGLU models), refused otherwise",
    "qwen3": "plain Qwen3 repo loadable by Qwen3ForCausalLM (as llama, with QK-norm), refused otherwise",
    "gguf": "one model.gguf (llama.cpp's gpt2, llama, qwen2 or qwen3 architecture, from the config) + README + "
    "Ollama Modelfile, see --quant",
    "onnx": "onnx/model.onnx with a KV cache + plain config + tokenizer for transformers.js / onnxruntime; "
    "--quant int8 adds onnx/model_quantized.onnx",
    "executorch": "model.pte for ExecuTorch (static KV cache, XNNPACK; needs pip install executorch) + config + "
    "tokenizer; --quant int8 makes the linear layers int8",
}


@dataclass
class ExportOptions:
    """How ``export`` writes OUT_DIR (the card's options are :class:`hub_export.card.CardOptions`)."""

    _argument_group_name = "export"

    export_format: str = field(default="remote-code", metadata={
        "aliases": ["--format"], "choices": tuple(EXPORT_FORMATS),
        "help": "; ".join(f"{k}: {v}" for k, v in EXPORT_FORMATS.items())})
    max_shard_size: str = field(default="5GB", metadata={
        "help": "split the safetensors weights into shards above this size, e.g. 5GB, 500MB (default: 5GB)"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace OUT_DIR if it exists (the old folder is replaced only once the new one is verified)"})
    require_tokenizer: bool = field(default=False, metadata={
        "help": "refuse to export a model folder without tokenizer files (default: export with a warning)"})
    run_dir: str | None = field(default=None, metadata={
        "help": "run folder holding the settings, results, log history and loss plot for the card "
        "(default: MODEL, or its parent when only that has them)"})
    quant: str | None = field(default=None, metadata={
        "help": "--format gguf: f32 (default), f16, bf16, q8_0 (llama.cpp's 8-bit blocks) or q4_0 (4-bit); --format "
        "onnx or executorch: int8 "
        "(adds an int8-weight file beside the fp32 one)"})
    space: bool = field(default=False, metadata={
        "help": "also write app.py + requirements.txt, so the repo runs the `scratch-gpt playground` page as a "
        "Hub Space"})
    web: bool = field(default=False, metadata={
        "help": "--format onnx: also write index.html + web/ (transformers.js and its WASM copied from the npm "
        "package), a page that runs the model in the browser from any static file server"})
    web_assets: str | None = field(default=None, metadata={
        "metavar": "DIR", "help": "--web: the node_modules folder holding @huggingface/transformers (default: "
        "./node_modules, .ci/node-transformersjs/node_modules, then npm root -g)"})


@dataclass
class PushOptions:
    """How ``push`` uploads OUT_DIR."""

    _argument_group_name = "upload"

    private: bool = field(default=False, metadata={
        "help": "create the repository as private (ignored if it exists)"})
    revision: str | None = field(default=None, metadata={
        "metavar": "BRANCH", "help": "branch to commit to, created from main when missing (default: main)"})
    commit_message: str | None = field(default=None, metadata={
        "help": "commit message (default: 'Upload scratch-gpt export')"})
    token: str | None = field(default=None, metadata={
        "help": "Hub write token (default: HF_TOKEN or the saved login; prefer those, since a command-line "
        "argument is visible to other users of the machine)"})


def _options_parser(*parts: type) -> argparse.ArgumentParser:
    """The options of ``parts`` through transformers' ``HfArgumentParser`` (a parent parser, one group each).

    --help and usage show an option's alias (``--format``, ``--tag``), else its --kebab-case spelling, first;
    the --snake_case spelling HfArgumentParser adds keeps working.
    """
    from transformers import HfArgumentParser

    parser = HfArgumentParser(parts, add_help=False)
    for action in parser._actions:
        order = {name: i for i, name in enumerate(action.option_strings)}
        action.option_strings.sort(key=lambda s: ("_" in s, -order[s]))
    return parser


def _from_namespace(cls: type, args: argparse.Namespace) -> Any:
    """Dataclass ``cls`` from the parsed options; repeatable list options (``--tag a --tag b``) flattened."""
    values = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name)
        if f.metadata.get("action") == "append":
            value = [item for group in value for item in (group if isinstance(group, list) else [group])]
        values[f.name] = value
    return cls(**values)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` and ``push`` subcommands."""
    _register_export(subparsers)
    _register_push(subparsers)


def _register_export(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        parents=[_options_parser(ExportOptions, CardOptions)],
        help="Export a model folder to a complete, self-verified Hugging Face Hub repository folder.",
        description="Write MODEL as a Hub repository folder at OUT_DIR: weights (safetensors), config, tokenizer, "
        "generation config, loss plot, the run's metrics and a model card (README). remote-code (default) ships "
        "the scratch_gpt modeling files with an auto_map (load with trust_remote_code=True); gpt2 writes a plain "
        "GPT-2 repo. The folder is staged beside OUT_DIR and appears only after a fresh Python process that "
        "cannot import scratch_gpt has loaded it and matched the source model's logits.",
    )
    p.add_argument("model", metavar="MODEL", help="scratch-gpt model folder (a run folder, or any folder written "
                   "by save_pretrained)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write the Hub repository into (must not exist "
                   "unless --overwrite, and must not overlap MODEL)")
    p.set_defaults(func=_cmd_export)


def _register_push(subparsers: argparse._SubParsersAction) -> None:
    q = subparsers.add_parser(
        "push",
        parents=[_options_parser(PushOptions)],
        help="Upload an export folder to the Hugging Face Hub (create_repo + upload_folder).",
        description="Upload OUT_DIR (written by `scratch-gpt export`) to the model repository REPO_ID, creating "
        "it (and --revision's branch) when missing. The token comes from --token, HF_TOKEN or the saved "
        "`hf auth login`, and is never printed, logged or written. HF_ENDPOINT selects another Hub.",
    )
    q.add_argument("out_dir", metavar="OUT_DIR", help="export folder to upload")
    q.add_argument("repo_id", metavar="REPO_ID", help="target repository, OWNER/NAME")
    q.set_defaults(func=_cmd_push)


def _card_options(args: argparse.Namespace) -> CardOptions:
    if args.repo_id:
        from .push import validate_repo_id

        validate_repo_id(args.repo_id)
    return _from_namespace(CardOptions, args)


def _run_export(args: argparse.Namespace) -> Any:
    """Dispatch on ``--format``: every Hub-repo format goes through export_model."""
    from .export import export_model

    options = dataclasses.asdict(_from_namespace(ExportOptions, args))
    quant, space = options.pop("quant"), options.pop("space")
    web, web_assets = options.pop("web"), options.pop("web_assets")
    if (web or web_assets) and options["export_format"] != "onnx":
        raise ValueError("--web and --web-assets apply to --format onnx only (the page runs the ONNX files)")
    if web_assets and not web:
        raise ValueError("--web-assets is for --web: add --web, or leave --web-assets out")
    if options["export_format"] == "onnx":
        return _run_onnx(args, options["overwrite"], quant, space, (web, web_assets))
    if options["export_format"] == "gguf":
        return _run_gguf(args, options["overwrite"], quant, space)
    if options["export_format"] == "executorch":
        return _run_executorch(args, options["overwrite"], quant, space)
    if quant is not None:
        raise ValueError(f"--quant {quant} applies to --format gguf only (and int8 to --format onnx)")
    result = export_model(args.model, args.out_dir, **options, card_options=_card_options(args))
    if space and result.task == "text-generation":
        from .playground import write_space

        result.files = sorted(set(result.files) | set(write_space(result.out_dir)))
    elif space:
        result.warnings.append("--space skipped: the playground runs text-generation models only")
    return result


def _run_gguf(args: argparse.Namespace, overwrite: bool, quant: str | None, space: bool) -> Any:
    """``--format gguf``: one GGUF file for llama.cpp / Ollama (see :mod:`hub_export.gguf`)."""
    from .gguf import export_gguf

    if space:
        raise ValueError("--space needs a Hub-repo format (remote-code or gpt2): a Space loads it with transformers")
    return export_gguf(args.model, args.out_dir, quant=quant or "f32", overwrite=overwrite)


def _run_onnx(args: argparse.Namespace, overwrite: bool, quant: str | None, space: bool, web: tuple) -> Any:
    """``--format onnx``: the transformers.js layout (see :mod:`hub_export.onnx_export`)."""
    from .onnx_export import export_onnx

    if space:
        raise ValueError("--space needs a Hub-repo format (remote-code or gpt2): a Space loads it with transformers")
    return export_onnx(args.model, args.out_dir, quant=quant, overwrite=overwrite, web=web[0], web_assets=web[1])


def _run_executorch(args: argparse.Namespace, overwrite: bool, quant: str | None, space: bool) -> Any:
    """``--format executorch``: one ``.pte`` program (see :mod:`hub_export.executorch_export`)."""
    from .executorch_export import export_executorch

    if space:
        raise ValueError("--space needs a Hub-repo format (remote-code or gpt2): a Space loads it with transformers")
    return export_executorch(args.model, args.out_dir, quant=quant, overwrite=overwrite)


def _cmd_export(args: argparse.Namespace) -> int:
    from .verify import ExportVerificationError

    try:
        result = _run_export(args)
    except ExportVerificationError as err:
        print(f"scratch-gpt export: self-check failed, nothing written to {args.out_dir}: {err}", file=sys.stderr)
        return 1
    if getattr(result, "model_type", None) == "executorch":
        v = result.verification
        print(f"exported ExecuTorch program to {result.out_dir} in {result.seconds:.1f} s; files: "
              f"{', '.join(result.files)}; ExecuTorch runtime self-check: max |logit diff| {v['max_abs_diff']:.3g}, "
              "greedy tokens with the static cache match" + (
                  f", int8 next-token agreement {v['int8_next_token_agreement']:.0%}" if result.quant else ""))
        for w in result.warnings:
            print(f"warning: {w}", file=sys.stderr)
        return 0
    if getattr(result, "model_type", None):  # --format onnx
        v = result.verification
        print(f"exported ONNX ({result.model_type} config) to {result.out_dir} in {result.seconds:.1f} s; files: "
              f"{', '.join(result.files)}; onnxruntime self-check: max |logit diff| {v['max_abs_diff']:.3g}, "
              f"greedy tokens with the KV cache match" + (
                  f", int8 next-token agreement {v['int8_next_token_agreement']:.0%}" if result.quant else ""))
        if "index.html" in result.files:
            print(f"open the page: python -m http.server -b 127.0.0.1 -d {result.out_dir} 8000, then "
                  "http://127.0.0.1:8000/ in a browser")
        for w in result.warnings:
            print(f"warning: {w}", file=sys.stderr)
        return 0
    if getattr(result, "quant", None):  # --format gguf
        print(f"exported GGUF ({result.quant}) to {result.out_dir} in {result.seconds:.1f} s; files: "
              f"{', '.join(result.files)}; run it: ollama create NAME -f {result.out_dir}/Modelfile")
        for w in result.warnings:
            print(f"warning: {w}", file=sys.stderr)
        return 0
    _print_export(result)
    return 0


def _print_export(result: Any) -> None:
    v = result.verification
    print(f"exported {result.task} model ({result.num_parameters / 1e6:.2f}M parameters, format "
          f"{result.export_format}) to {result.out_dir}")
    print(f"files: {', '.join(result.files)}")
    print(f"self-check (fresh process, scratch_gpt not importable): loaded as {v['model_class']}, "
          f"max |logit diff| {v['max_abs_diff']:.3g}, generation match {v['generation_match']}, "
          f"pipeline output {json.dumps(v['pipeline_output'])}")
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    auto = "AutoModelForCausalLM" if result.task == "text-generation" else "AutoModelForSequenceClassification"
    trust = ", trust_remote_code=True" if result.export_format == "remote-code" else ""
    print(f"load it: {auto}.from_pretrained({str(result.out_dir)!r}{trust})")


def _cmd_push(args: argparse.Namespace) -> int:
    from .push import PushError, push_folder

    try:
        url = push_folder(args.out_dir, args.repo_id, **dataclasses.asdict(_from_namespace(PushOptions, args)))
    except PushError as err:
        print(f"scratch-gpt push: error: {err}", file=sys.stderr)
        return 1
    print(f"pushed {args.out_dir} to {args.repo_id}: {url}")
    print(f"load it: {_load_hint(args.out_dir, args.repo_id)}")
    return 0


def _load_hint(folder: str, repo_id: str) -> str:
    """The from_pretrained call that loads the pushed repo (Auto class and trust_remote_code from its config)."""
    from scratch_gpt.run_folder import CONFIG_FILE, read_json

    try:
        config = read_json(folder, CONFIG_FILE, {}) or {}
    except (OSError, ValueError):
        config = {}
    archs = config.get("architectures") or [""]
    auto = "AutoModelForSequenceClassification" if archs[0].endswith("SequenceClassification") else (
        "AutoModelForCausalLM")
    trust = ", trust_remote_code=True" if config.get("auto_map") else ""
    return f'{auto}.from_pretrained("{repo_id}"{trust})'
