"""`scratch-gpt serve`: transformers' own OpenAI-compatible server, able to load scratch-gpt models.

`transformers serve` (transformers 5.x, ``transformers/cli/serve.py``) wires a FastAPI app with its own handlers
for ``/v1/completions``, ``/v1/chat/completions`` (streaming and not, chat template applied), ``/v1/responses``
and ``/v1/models``, with optional continuous batching. We reuse all of it unchanged: ``Serve`` itself builds the
app, the handlers, the generation managers and the uvicorn server.

The one thing it cannot do is load an architecture that transformers does not ship. In transformers 5.24
``ModelManager._load_model`` (``transformers/cli/serving/model_manager.py``) ends with::

    architecture = getattr(transformers, config.architectures[0])
    return architecture.from_pretrained(model_id, **model_kwargs)

so ``ScratchGPTForCausalLM`` (a run folder, or an exported remote-code repo) raises ``AttributeError`` whatever
``--trust-remote-code`` says. :class:`ScratchModelManager` overrides that one method: architectures transformers
ships still go through the stock loader; any other one goes through ``AutoModelForCausalLM``, which knows our
classes (``import scratch_gpt`` registers them); an export served with ``--trust-remote-code`` runs its own
``auto_map`` modeling code instead. ``Serve`` imports
``ModelManager`` from its module when it is constructed, so :func:`serve` swaps in the subclass for that
construction only (no copy of transformers' wiring).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import socket
from collections.abc import Iterator
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


def _load_kwargs(manager: Any, revision: str | None) -> dict[str, Any]:
    """The ``from_pretrained`` arguments transformers' own loader passes, from the manager's settings."""
    kwargs = {
        "revision": revision,
        "attn_implementation": manager.attn_implementation,
        "dtype": manager.dtype,
        "device_map": manager.device,
        "trust_remote_code": manager.trust_remote_code,
    }
    quantization_config = manager.get_quantization_config()
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    return kwargs


def _load_own_code(manager: Any, model_id: str, revision: str | None, class_ref: str) -> Any:
    """Load with the repo's own ``auto_map`` class, named explicitly: transformers 5.24 would otherwise prefer our
    registered class over a repo's code even with ``trust_remote_code`` (``explicit_local_code`` in
    ``models/auto/auto_factory.py``)."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    logger.info("loading %s with its own modeling code (%s)", model_id, class_ref)
    model_class = get_class_from_dynamic_module(class_ref, model_id, revision=revision)
    return model_class.from_pretrained(model_id, **_load_kwargs(manager, revision))


def _warn_without_chat_template(processor: Any, name: str) -> None:
    if not getattr(processor, "chat_template", None):
        logger.warning("%s has no chat template (a base model): /v1/chat/completions will fail, use /v1/completions "
                       "(instruction-finetuned models carry one)", name)


def scratch_model_manager() -> type:
    """transformers' ``ModelManager`` with a loader that also knows non-transformers architectures."""
    import transformers
    from transformers.cli.serving.model_manager import ModelManager
    from transformers.cli.serving.utils import split_revision

    import scratch_gpt  # noqa: F401  (the import registers our config and model classes with the Auto factories)

    class ScratchModelManager(ModelManager):
        """Loads architectures transformers does not ship through ``AutoModelForCausalLM`` (or the repo's code)."""

        def _load_model(self, model_id_and_revision: str, tqdm_class=None, progress_callback=None, gguf_file=None):
            model_id, revision = split_revision(model_id_and_revision)
            config = transformers.AutoConfig.from_pretrained(
                model_id, revision=revision, trust_remote_code=self.trust_remote_code
            )
            architecture = (config.architectures or [""])[0]
            if gguf_file is not None or hasattr(transformers, architecture):
                return super()._load_model(model_id_and_revision, tqdm_class, progress_callback, gguf_file)
            class_ref = (getattr(config, "auto_map", None) or {}).get("AutoModelForCausalLM")
            if self.trust_remote_code and class_ref:
                return _load_own_code(self, model_id, revision, class_ref)
            logger.info("loading %s (%s) through AutoModelForCausalLM", model_id, architecture)
            return transformers.AutoModelForCausalLM.from_pretrained(model_id, **_load_kwargs(self, revision))

        def _load_processor(self, model_id_and_revision: str, gguf_file=None):
            processor = super()._load_processor(model_id_and_revision, gguf_file)
            _warn_without_chat_template(processor, model_id_and_revision)
            return processor

    return ScratchModelManager


@contextlib.contextmanager
def _model_manager_swapped(manager_class: type) -> Iterator[None]:
    """Make ``transformers serve``'s ``Serve`` construct ``manager_class`` instead of its ``ModelManager``."""
    from transformers.cli.serving import model_manager

    original = model_manager.ModelManager
    model_manager.ModelManager = manager_class
    try:
        yield
    finally:
        model_manager.ModelManager = original


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, **serve_options: Any) -> Any:
    """Serve ``model`` with transformers' own ``Serve`` (blocking unless ``non_blocking=True``).

    ``serve_options`` are ``transformers serve``'s own keyword arguments (``continuous_batching``,
    ``trust_remote_code``, ``device``, ``dtype``, ``attn_implementation``, ``cb_*``, ``log_level``,
    ``non_blocking``, ...). Returns the ``Serve`` object (useful with ``non_blocking=True``).
    """
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        raise ValueError("serving needs fastapi and uvicorn: pip install 'scratch-gpt[serve]'")
    check_model(model)
    check_port_free(host, port)
    from transformers.cli.serve import Serve

    logger.info("serving %s on http://%s:%d/v1 (Ctrl+C stops)", model, host, port)

    with _model_manager_swapped(scratch_model_manager()):
        return Serve(force_model=model, host=host, port=port, **serve_options)


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand."""
    p = subparsers.add_parser(
        "serve",
        help="Serve a model on OpenAI-compatible endpoints with transformers' own server (transformers serve).",
        description="Run transformers' own OpenAI-compatible server (the app and handlers of `transformers serve`) "
        "pinned to MODEL: POST /v1/completions, /v1/chat/completions (streaming with \"stream\": true; the "
        "tokenizer's chat template is applied, so use an instruction-finetuned model), /v1/responses, GET "
        "/v1/models and /health. MODEL is a scratch-gpt run folder, an export folder (remote code or gpt2) or a "
        "Hub repo id. Needs `pip install 'scratch-gpt[serve]'`.",
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
