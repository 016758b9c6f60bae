"""`scratch-gpt serve`: transformers' own OpenAI-compatible server, able to load scratch-gpt models.

`transformers serve` (``transformers/cli/serve.py``) wires a FastAPI app with its own handlers for
``/v1/completions``, ``/v1/chat/completions`` (streaming and not, chat template applied), ``/v1/responses`` and
``/v1/models``, with optional continuous batching. We reuse all of it: ``Serve`` itself builds the app, the
handlers, the generation and the uvicorn server. What we change (loading architectures transformers does not
ship, answers capped at the model's context, OpenAI error bodies) goes through
:mod:`hub_export.serving_compat`, the one module that touches transformers' private serving code, with an entry
per tested transformers version; any other version is refused in one line before anything loads.
"""

from __future__ import annotations

import errno
import logging
import re
import socket
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def check_model(model: str) -> None:
    """Refuse a model that is neither a model folder nor a Hub repo id, with one clear line."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{model} has no config.json: pass a model folder written by save_pretrained "
                "(a scratch-gpt run folder or an export)"
            )
        return
    if path.exists() or not _REPO_ID.match(model):
        raise FileNotFoundError(
            f"model folder {model} does not exist: pass a scratch-gpt run folder, an export folder "
            "or a Hub repo id (OWNER/NAME)"
        )


def check_port_free(host: str, port: int) -> None:
    """Raise ``OSError`` naming the port when ``host:port`` cannot be bound (checked before the model loads)."""
    if not 0 < port < 65536:
        raise ValueError(f"--port {port} is not a TCP port: use 1-65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise OSError(f"port {port} on {host} is already in use: pick another with --port") from None
            raise OSError(f"cannot listen on {host}:{port} ({err.strerror}): check --host and --port") from None


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, **serve_options: Any) -> Any:
    """Serve ``model`` with transformers' own ``Serve`` (blocking; with transformers 5.24 ``non_blocking=True``
    returns at once).

    ``serve_options`` are ``transformers serve``'s own keyword arguments (``continuous_batching``,
    ``trust_remote_code``, ``device``, ``dtype``, ``attn_implementation``, ``cb_*``, ``log_level``, ...). Returns
    the ``Serve`` object. Refuses, in one line, a transformers version outside the tested ones.
    """
    from transformers.utils.import_utils import is_serve_available

    from . import serving_compat

    serving_compat.tested_series()
    if not is_serve_available():
        raise ValueError("serving needs fastapi and uvicorn: pip install 'scratch-gpt[serve]'")
    check_model(model)
    check_port_free(host, port)
    import scratch_gpt  # noqa: F401  (the server reads the model's config through AutoConfig)

    logger.info("serving %s on http://%s:%d/v1 (Ctrl+C stops)", model, host, port)
    return serving_compat.run_serve(model, host=host, port=port, **serve_options)


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand."""
    p = subparsers.add_parser(
        "serve",
        help="Serve a model on OpenAI-compatible endpoints with transformers' own server (transformers serve).",
        description="Run transformers' own OpenAI-compatible server (the app and handlers of `transformers serve`) "
        "pinned to MODEL: POST /v1/completions, /v1/chat/completions (streaming with \"stream\": true; the "
        "tokenizer's chat template is applied, so use an instruction-finetuned model), /v1/responses, GET "
        "/v1/models and /health. Answers are capped at the model's context (finish_reason \"length\"); a prompt "
        "that does not fit or an invalid parameter is a 400 with an OpenAI error body. MODEL is a scratch-gpt run "
        "folder, an export folder (remote code or gpt2) or a Hub repo id. Needs `pip install 'scratch-gpt[serve]'`; "
        "tested with transformers 5.24.x and 5.25.x.",
    )
    p.add_argument("model", metavar="MODEL", help="model folder (run folder or export) or Hub repo id")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on (default: 8000)")
    p.add_argument("--continuous-batching", action="store_true",
                   help="batch concurrent requests with paged attention (transformers' continuous batching)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run an export's own modeling code (its auto_map) instead of the installed scratch_gpt")
    p.add_argument("--device", default="auto", help="device, e.g. auto, cpu, cuda:0 (default: auto)")
    p.add_argument("--dtype", default="auto", help="weights dtype, e.g. auto, float32, bfloat16 (default: auto)")
    p.add_argument("--attn-implementation", default=None,
                   help="attention implementation, e.g. sdpa, eager, flash_attention_2 (default: the model's)")
    p.add_argument("--cb-num-blocks", type=int, default=None,
                   help="continuous batching: number of KV-cache blocks (default: sized by transformers)")
    p.add_argument("--cb-max-batch-tokens", type=int, default=None,
                   help="continuous batching: most tokens in one forward pass (default: sized by transformers)")
    p.add_argument("--log-level", default="warning", help="transformers' log level (default: warning)")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: Any) -> int:
    serve(
        args.model,
        host=args.host,
        port=args.port,
        continuous_batching=args.continuous_batching,
        trust_remote_code=args.trust_remote_code,
        device=args.device,
        dtype=args.dtype,
        attn_implementation=args.attn_implementation,
        cb_num_blocks=args.cb_num_blocks,
        cb_max_batch_tokens=args.cb_max_batch_tokens,
        log_level=args.log_level,
    )
    return 0
