"""The one module of scratch-gpt that touches transformers' private serving code (``transformers/cli/serving``).

`scratch-gpt serve` runs transformers' own OpenAI-compatible server (``transformers serve``: its ``Serve``, FastAPI
app, handlers, continuous batching and uvicorn) and changes three things, each through the smallest hook the
installed transformers offers. :data:`ENTRIES` holds one entry per tested ``major.minor``; any other version is
refused in one line (:func:`tested_series`).

1. **Loading.** ``transformers serve`` loads ``getattr(transformers, config.architectures[0])``, so it cannot load
   an architecture transformers does not ship (ours), whatever ``--trust-remote-code`` says. A subclass of its
   loader overrides that one method (``_load_model``; 5.24: ``ModelManager``, 5.25: ``ModelLoader``) and sends
   such architectures to ``AutoModelForCausalLM`` (``import scratch_gpt`` registers our classes) or, with
   ``--trust-remote-code``, to the repo's own ``auto_map`` class. 5.25 loads the model in a *spawned* process that
   unpickles the loader, so the subclass is a module-level name here (:func:`__getattr__`); importing it there
   runs ``import scratch_gpt``.
2. **The context.** New tokens are capped at the context the prompt leaves (``finish_reason`` "length"), and a
   prompt that leaves none is a 400 (:func:`fit_new_tokens`). The cap is set where the tokenized prompt meets the
   generation settings: 5.24, the generation manager's ``generate_*``; 5.25, the engine client's ``generate_*``
   and the handlers' own ``_check_prompt_length``.
3. **Errors.** Parameters are checked before transformers' handlers run (:func:`check_request`), ``logit_bias``
   token ids against the vocabulary where the cap is set, a failure of ``generate()`` under the request's own
   ``generation_config`` is the request's fault, and every 4xx answer carries an OpenAI error body
   (:func:`error_body`). Invalid JSON keeps FastAPI's 422.

``Serve`` imports its loader class and ``build_server`` from their modules when it runs, so :func:`run_serve` swaps
those two module attributes for the server's construction (5.25: its whole run, which blocks) and hooks the built
app; it copies none of transformers' handlers.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import multiprocessing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

PIN_HINT = "pip install 'transformers==5.25.*'"
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class UnsupportedTransformersError(ValueError):
    """The installed transformers is outside the versions `scratch-gpt serve` is tested with."""


class RequestError(ValueError):
    """A request's fault: answered 400 with an OpenAI error body naming ``param`` and ``code``."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.code = param, code


# ---------------------------------------------------------------------------------------------------------------
# Version-independent pieces: the context cap, request checks, error bodies, loading our architectures
# ---------------------------------------------------------------------------------------------------------------


def error_body(message: str, param: str | None = None, code: str | None = None,
               error_type: str = "invalid_request_error") -> dict[str, Any]:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def context_length(config: Any) -> int | None:
    """The model's context (``max_position_embeddings`` of its text config), ``None`` when it names none."""
    return getattr(config.get_text_config(), "max_position_embeddings", None)


def prompt_tokens(inputs: Any) -> int:
    """The prompt's token count: ``input_ids`` is a list (continuous batching) or a ``(1, n)`` tensor."""
    input_ids = inputs["input_ids"]
    return len(input_ids) if isinstance(input_ids, list) else int(input_ids.shape[-1])


def fit_new_tokens(prompt: int, context: int | None, requested: int | None) -> int | None:
    """``requested`` new tokens capped at the context left after a ``prompt``-token prompt (``requested`` None: all
    of it); :class:`RequestError` when the prompt leaves no room for one token."""
    if requested is not None and requested < 1:  # e.g. through the request's generation_config
        raise RequestError(f"max_new_tokens must be at least 1, got {requested}", param="generation_config",
                           code="invalid_value")
    if context is None:
        return requested
    room = context - prompt
    if room < 1:
        raise RequestError(
            f"this model's maximum context length is {context} tokens; the prompt has {prompt}, which leaves no room "
            "for an answer: shorten the prompt", code="context_length_exceeded")
    return room if requested is None else min(int(requested), room)


_NUMBER = (int, float)
_KINDS = {int: "an integer", str: "a string", list: "a list", dict: "an object", bool: "true or false"}
# field: (allowed types, lowest, highest); None values are skipped, as OpenAI's optional fields allow.
_FIELDS: dict[str, tuple[tuple[type, ...], float | None, float | None]] = {
    "max_tokens": ((int,), 1, None),
    "max_completion_tokens": ((int,), 1, None),
    "temperature": (_NUMBER, 0, 2),
    "top_p": (_NUMBER, 0, 1),
    "frequency_penalty": (_NUMBER, -0.99, 2),  # transformers' repetition_penalty = 1 + this, which must be > 0
    "seed": ((int,), -(2**63), 2**64 - 1),  # what torch.manual_seed takes
    "stream": ((bool,), None, None),
    "stream_options": ((dict,), None, None),
    "stop": ((str, list), None, None),
    "logit_bias": ((dict,), None, None),
    "chat_template_kwargs": ((dict,), None, None),
    "generation_config": ((str,), None, None),
    "model": ((str,), None, None),
    "prompt": ((str,), None, None),
    "suffix": ((str,), None, None),
}


def _check_field(name: str, value: Any) -> None:
    types, low, high = _FIELDS[name]
    wrong_type = isinstance(value, bool) and bool not in types or not isinstance(value, types)
    if wrong_type:
        kinds = "a number" if types == _NUMBER else " or ".join(_KINDS[t] for t in types)
        raise RequestError(f"{name} must be {kinds}, got {value!r}", param=name, code="invalid_type")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise RequestError(f"{name} must be {bounds}, got {value!r}", param=name, code="invalid_value")


def _message_problem(index: int, message: Any) -> str | None:
    """What is wrong with one chat message, as the chat template takes them, or ``None``."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        return f'messages[{index}] must be an object with a string "role"'
    content = message.get("content")
    if content is not None and not isinstance(content, (str, list)):
        return f"messages[{index}].content must be a string or a list of parts, got {content!r}"
    for part in content if isinstance(content, list) else []:
        if not isinstance(part, dict) or (part.get("type") == "text" and not isinstance(part.get("text"), str)):
            return f'messages[{index}].content must hold objects, a "text" part with a string "text"'
    tool_calls = message.get("tool_calls")
    if tool_calls and not (isinstance(tool_calls, list) and all(_is_tool_call(call) for call in tool_calls)):
        return (f'messages[{index}].tool_calls must be a list of {{"type": "function", "function": {{"name": ..., '
                '"arguments": a JSON object, or a string of one}}')
    return None


def _is_tool_call(call: Any) -> bool:
    function = call.get("function") or call if isinstance(call, dict) else None
    arguments = function.get("arguments") if isinstance(function, dict) else None
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return False
    return isinstance(arguments, dict)


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        problem = "messages must be a non-empty list of messages"
    else:
        problem = next(filter(None, (_message_problem(i, m) for i, m in enumerate(messages))), None)
    if problem:
        raise RequestError(problem, param="messages", code="invalid_value")


# apply_chat_template's arguments that transformers' handlers pass themselves
_RESERVED_TEMPLATE_KWARGS = {"conversation", "add_generation_prompt", "tools", "return_tensors", "return_dict",
                             "tokenize", "load_audio_from_video"}


def _normalize_logit_bias(body: dict[str, Any]) -> None:
    """``logit_bias`` as OpenAI defines it ({token id: -100..100}), its values made floats: transformers'
    ``sequence_bias`` takes nothing else, so OpenAI's integer biases would fail every request."""
    bias = body.get("logit_bias")
    if not bias:
        return
    if not all(str(token).isdigit() and isinstance(value, _NUMBER) and not isinstance(value, bool)
               and -100 <= value <= 100 for token, value in bias.items()):
        raise RequestError('logit_bias must map token ids to numbers from -100 to 100, e.g. {"50256": -100}',
                           param="logit_bias", code="invalid_value")
    body["logit_bias"] = {token: float(value) for token, value in bias.items()}


def check_request(body: dict[str, Any], endpoint: str) -> None:
    """Refuse what transformers' handlers would turn into a 500 or a failed stream: a field of the wrong type or
    range (``max_tokens`` <= 0, ...), no prompt, malformed messages or tools, template arguments the server sets.
    ``logit_bias`` values are made floats in place. ``endpoint``: ``"completions"`` or ``"chat"``."""
    for name, value in body.items():
        if name in _FIELDS and value is not None:
            _check_field(name, value)
    if isinstance(body.get("stop"), list) and not (body["stop"] and all(isinstance(s, str) for s in body["stop"])):
        raise RequestError("stop must be a string or a non-empty list of strings", param="stop", code="invalid_type")
    reserved = _RESERVED_TEMPLATE_KWARGS.intersection(body.get("chat_template_kwargs") or {})
    if reserved:
        raise RequestError(f"chat_template_kwargs cannot set {', '.join(sorted(reserved))}: the server sets them",
                           param="chat_template_kwargs", code="invalid_value")
    _normalize_logit_bias(body)
    if body.get("generation_config") is not None:
        try:
            settings = json.loads(body["generation_config"])
        except ValueError:
            settings = None
        if not isinstance(settings, dict):
            raise RequestError("generation_config must be a JSON object in a string, e.g. '{\"top_k\": 20}'",
                               param="generation_config", code="invalid_value")
        if body.get("stream") and settings.get("num_beams", 1) != 1:
            raise RequestError("generation_config: beam search (num_beams other than 1) cannot stream: send "
                               '"stream": false', param="generation_config", code="invalid_value")
    if endpoint == "completions" and not body.get("prompt"):
        raise RequestError("prompt is missing or empty: send the text to complete", param="prompt",
                           code="invalid_value")
    if endpoint == "chat":
        _check_messages(body.get("messages"))
        tools = body.get("tools")
        if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
            raise RequestError("tools must be a list of objects", param="tools", code="invalid_type")


_SERVER_MODULES = ("transformers.cli", "starlette", "fastapi")


def _checked_handler(handle_request: Callable, endpoint: str) -> Callable:
    """``handle_request`` after :func:`check_request`; a context error names the endpoint's prompt field."""

    async def handle_request_checked(body: dict, request_id: str) -> Any:
        check_request(body, endpoint)
        try:
            return await handle_request(body, request_id)
        except RequestError as err:
            if err.code == "context_length_exceeded":
                err.param = "prompt" if endpoint == "completions" else "messages"
            raise
        except Exception as err:  # a generation_config can ask generate() for anything: its failure is the request's
            if body.get("generation_config") is None or type(err).__module__.startswith(_SERVER_MODULES):
                raise  # not the request's doing (a dead engine is a 503), or transformers' own HTTP answer
            raise RequestError(f"generation failed with the request's generation_config: {type(err).__name__}: "
                               f"{err}", param="generation_config", code="invalid_value") from err

    return handle_request_checked


def install_error_handlers(app: Any) -> None:
    """Every 4xx of ``app`` gets an OpenAI error body; a ``ValueError`` (the request's fault, as transformers 5.25
    already says) is a 400 rather than a 500. FastAPI's 422 for a body that is not JSON is left as it is."""
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(RequestError)
    async def _request_error(_request: Any, exc: RequestError) -> JSONResponse:
        return JSONResponse(error_body(str(exc), exc.param, exc.code), status_code=400)

    @app.exception_handler(ValueError)
    async def _value_error(_request: Any, exc: ValueError) -> JSONResponse:
        return JSONResponse(error_body(str(exc)), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Any, exc: HTTPException) -> Any:
        if not 400 <= exc.status_code < 500:
            return await http_exception_handler(request, exc)
        return JSONResponse(error_body(str(exc.detail)), status_code=exc.status_code, headers=exc.headers)


def _load_kwargs(loader: Any, revision: str | None) -> dict[str, Any]:
    """The ``from_pretrained`` arguments transformers' own loader passes, from its settings."""
    kwargs = {"revision": revision, "attn_implementation": loader.attn_implementation, "dtype": loader.dtype,
              "device_map": loader.device, "trust_remote_code": loader.trust_remote_code}
    quantization_config = loader.get_quantization_config()
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    return kwargs


def load_unshipped(loader: Any, repo: str, revision: str | None) -> Any:
    """Load ``repo`` when its architecture is not one transformers ships (``None`` otherwise): through
    ``AutoModelForCausalLM``, or with ``trust_remote_code`` through the repo's own ``auto_map`` class, named
    explicitly (transformers would otherwise prefer our registered class to the repo's code)."""
    import transformers

    import scratch_gpt  # noqa: F401  (registers our config and model classes with the Auto factories)

    config = transformers.AutoConfig.from_pretrained(repo, revision=revision,
                                                     trust_remote_code=loader.trust_remote_code)
    architecture = (config.architectures or [""])[0]
    if not architecture or hasattr(transformers, architecture):
        return None
    class_ref = (getattr(config, "auto_map", None) or {}).get("AutoModelForCausalLM")
    if loader.trust_remote_code and class_ref:
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        logger.info("loading %s with its own modeling code (%s)", repo, class_ref)
        model_class = get_class_from_dynamic_module(class_ref, repo, revision=revision)
        return model_class.from_pretrained(repo, **_load_kwargs(loader, revision))
    logger.info("loading %s (%s) through AutoModelForCausalLM", repo, architecture)
    return transformers.AutoModelForCausalLM.from_pretrained(repo, **_load_kwargs(loader, revision))


def warn_without_chat_template(processor: Any, name: str) -> None:
    """A base model has no chat template: say once, at start, that only /v1/completions works."""
    if not getattr(processor, "chat_template", None):
        logger.warning("%s has no chat template (a base model): /v1/chat/completions will fail, use /v1/completions "
                       "(instruction-finetuned models carry one)", name)


def _log_generation(model_id: str, continuous_batching: bool) -> None:
    how = "continuous batching (paged attention)" if continuous_batching else "generate(), one request at a time"
    logger.info("%s generates with %s, new tokens capped at its context", model_id, how)


def _bound(function: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    """``function``'s arguments by name, however the caller passed them."""
    return inspect.signature(function).bind(*args, **kwargs).arguments


def _biased_tokens_problem(settings: Any, config: Any) -> str | None:
    """Token ids of ``logit_bias`` (transformers' ``sequence_bias``) outside the vocabulary, named."""
    bias = settings.get("sequence_bias") if isinstance(settings, dict) else getattr(settings, "sequence_bias", None)
    vocab_size = getattr(config.get_text_config(), "vocab_size", None)
    outside = sorted(token for tokens in (bias or {}) for token in tokens if vocab_size and token >= vocab_size)
    return f"logit_bias names token ids {outside} beyond the vocabulary of {vocab_size}" if outside else None


def _capping(generate: Callable, settings: str, config_of: Callable[[dict], Any]) -> Callable:
    """``generate`` (a ``generate_streaming`` / ``generate_non_streaming``) with the ``max_new_tokens`` of its
    ``settings`` argument (5.24: a ``GenerationConfig``, 5.25: a dict) capped in place at the context of the model's
    config, ``config_of(arguments)``: the handler reads the same object again for the finish reason."""

    def generate_capped(*args: Any, **kwargs: Any) -> Any:
        arguments = _bound(generate, args, kwargs)
        config, model_config = arguments[settings], config_of(arguments)
        prompt, context = prompt_tokens(arguments["inputs"]), context_length(model_config)
        if isinstance(config, dict):
            config["max_new_tokens"] = fit_new_tokens(prompt, context, config.get("max_new_tokens"))
        else:
            config.max_new_tokens = fit_new_tokens(prompt, context, config.max_new_tokens)
        problem = _biased_tokens_problem(config, model_config)
        if problem:
            raise RequestError(problem, param="logit_bias", code="invalid_value")
        return generate(*args, **kwargs)

    return generate_capped


# ---------------------------------------------------------------------------------------------------------------
# One entry per tested transformers series
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """How one transformers series is adapted: the loader class to swap in (module attribute ``loader_name`` of
    ``transformers.cli.serving.model_manager``, replaced by ``loader_class()``) and the hooks on the built app."""

    loader_name: str
    loader_class: Callable[[], type]
    hook: Callable[[dict[str, Any]], None]


@functools.cache
def _manager_class_524() -> type:
    from transformers.cli.serving.model_manager import ModelManager
    from transformers.cli.serving.utils import split_revision

    class ScratchModelManager(ModelManager):
        """transformers 5.24's ``ModelManager``, loading architectures transformers does not ship."""

        def _load_model(self, model_id_and_revision: str, tqdm_class: Any = None, progress_callback: Any = None,
                        gguf_file: str | None = None) -> Any:
            repo, revision = split_revision(model_id_and_revision)
            model = None if gguf_file else load_unshipped(self, repo, revision)
            if model is None:
                model = super()._load_model(model_id_and_revision, tqdm_class, progress_callback, gguf_file)
            return model

        def _load_processor(self, model_id_and_revision: str, gguf_file: str | None = None) -> Any:
            processor = super()._load_processor(model_id_and_revision, gguf_file)
            warn_without_chat_template(processor, model_id_and_revision)
            return processor

    ScratchModelManager.__qualname__ = ScratchModelManager.__name__ = "ScratchModelManager"
    return ScratchModelManager


def _hook_524(parts: dict[str, Any]) -> None:
    """Cap new tokens in each generation manager ``generate_*(model, processor, inputs, gen_config, ...)``."""
    state = parts["generation_state"]
    get_manager = state.get_manager

    def config_of(arguments: dict) -> Any:
        return arguments["model"].config

    def get_manager_capped(*args: Any, **kwargs: Any) -> Any:
        manager = get_manager(*args, **kwargs)
        if not getattr(manager, "_scratch_capped", False):
            arguments = _bound(get_manager, args, kwargs)
            _log_generation(arguments["model_id"], arguments.get("use_cb", False))
            for name in ("generate_streaming", "generate_non_streaming"):
                setattr(manager, name, _capping(getattr(manager, name), "gen_config", config_of))
            manager._scratch_capped = True
        return manager

    state.get_manager = get_manager_capped


@functools.cache
def _loader_class_525() -> type:
    from transformers.cli.serving.model_manager import ModelLoader
    from transformers.cli.serving.utils import parse_model_id

    class ScratchModelLoader(ModelLoader):
        """transformers 5.25's ``ModelLoader``, loading architectures transformers does not ship. It is pickled into
        the model's spawned process, whose logging it sets like its parent's (nobody else does)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.log_level = logging.getLogger().getEffectiveLevel()

        def _load_model(self, model_id: str, tqdm_class: Any = None, progress_callback: Any = None) -> Any:
            if multiprocessing.parent_process() is not None and not logging.getLogger().handlers:
                logging.basicConfig(level=self.log_level, format=_LOG_FORMAT, datefmt="%H:%M:%S")
            repo, revision, gguf_file = parse_model_id(model_id)
            model = None if gguf_file else load_unshipped(self, repo, revision)
            return model if model is not None else super()._load_model(model_id, tqdm_class, progress_callback)

        def load_processor(self, model_id: str) -> Any:
            processor = super().load_processor(model_id)
            if multiprocessing.parent_process() is None:  # the API server's process: once, not again in the model's
                warn_without_chat_template(processor, model_id)
            return processor

    ScratchModelLoader.__qualname__ = ScratchModelLoader.__name__ = "ScratchModelLoader"
    return ScratchModelLoader


def _hook_525(parts: dict[str, Any]) -> None:
    """Refuse a prompt that does not fit in the handlers' ``_check_prompt_length(engine, inputs)``, and cap new tokens
    in each engine client's ``generate_*(inputs, generation_kwargs, ...)``."""
    manager = parts["model_manager"]
    get_engine = manager.get_engine

    def check_prompt_length(engine: Any, inputs: dict) -> None:
        fit_new_tokens(prompt_tokens(inputs), context_length(engine.model_config), None)

    for name in ("chat_handler", "completion_handler"):
        parts[name]._check_prompt_length = check_prompt_length

    def get_engine_capped(*args: Any, **kwargs: Any) -> Any:
        engine = get_engine(*args, **kwargs)
        if not getattr(engine, "_scratch_capped", False):
            _log_generation(engine.model_id, engine.use_cb)
            for method in ("generate_streaming", "generate_non_streaming"):
                setattr(engine, method, _capping(getattr(engine, method), "generation_kwargs",
                                                 lambda _arguments, engine=engine: engine.model_config))
            engine._scratch_capped = True
        return engine

    manager.get_engine = get_engine_capped


ENTRIES: dict[str, Entry] = {
    "5.24": Entry("ModelManager", _manager_class_524, _hook_524),
    "5.25": Entry("ModelLoader", _loader_class_525, _hook_525),
}


def __getattr__(name: str) -> Any:
    """``ScratchModelLoader`` by name, as the model's spawned process unpickles it (5.25)."""
    if name == "ScratchModelLoader":
        return _loader_class_525()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def tested_series(version: str | None = None) -> str:
    """The tested ``major.minor`` (a key of :data:`ENTRIES`) that ``version`` (default: the installed transformers)
    belongs to; :class:`UnsupportedTransformersError`, one line naming the tested versions and a pin, otherwise."""
    from packaging.version import InvalidVersion, Version

    if version is None:
        import transformers

        version = transformers.__version__
    try:
        parsed = Version(version)
        series = f"{parsed.major}.{parsed.minor}"
    except InvalidVersion:
        parsed, series = None, ""
    if parsed is None or parsed.is_prerelease or series not in ENTRIES:
        tested = ", ".join(f"{s}.x" for s in ENTRIES)
        raise UnsupportedTransformersError(
            f"scratch-gpt serve is tested with transformers {tested}, not {version}: pin a tested one, e.g. {PIN_HINT}")
    return series


@contextlib.contextmanager
def _swapped(module: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def _hooked_build_server(build_server: Callable, hook: Callable[[dict[str, Any]], None]) -> Callable:
    """transformers' ``build_server``, then our request checks, context hooks and error bodies on what it built."""

    def build_server_hooked(*args: Any, **kwargs: Any) -> Any:
        app = build_server(*args, **kwargs)
        parts = _bound(build_server, args, kwargs)
        hook(parts)
        for name, endpoint in (("completion_handler", "completions"), ("chat_handler", "chat")):
            handler = parts[name]
            handler.handle_request = _checked_handler(handler.handle_request, endpoint)
        install_error_handlers(app)
        return app

    return build_server_hooked


def run_serve(model: str, **serve_options: Any) -> Any:
    """Construct transformers' ``Serve`` for ``model`` (it runs the server) with the installed series' entry."""
    from transformers.cli import serve as serve_module
    from transformers.cli.serving import model_manager, server

    entry = ENTRIES[tested_series()]
    if serve_options.get("api_server_count", 1) != 1:  # 5.25's extra API servers are spawned without our hooks
        raise ValueError("scratch-gpt serve runs one API server: leave api_server_count at 1")
    hooked = _hooked_build_server(server.build_server, entry.hook)
    with _swapped(model_manager, entry.loader_name, entry.loader_class()), _swapped(server, "build_server", hooked):
        return serve_module.Serve(force_model=model, **serve_options)
