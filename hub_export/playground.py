"""A browser playground for a causal LM: `scratch-gpt playground MODEL [--port P]`, and the Hub Space app.

Gradio (what Hub Spaces run) serves one page on the local machine:

- a **Completion** tab: a prompt, a Generate and a Stop button, and the continuation streamed token by token
  (``TextIteratorStreamer``; ``generate`` runs in a worker thread);
- a **Chat** tab when the tokenizer has a chat template (the conversation rendered through it);
- controls for temperature (0 = greedy, what ``pipeline()`` does by default), top-k, top-p, max new tokens
  and the seed.

Stop works per browser session: the button sets that session's event, a ``StoppingCriteria`` ends
``generate`` at the next token, and Gradio cancels the streaming call.

This file imports only the standard library, torch, transformers and gradio (scratch_gpt only if installed),
so ``export --space`` ships it verbatim as the Space's ``app.py`` (see :func:`write_space`): the Space runs the
same playground, loading the exported repo's remote code with ``trust_remote_code=True``.
"""

import argparse
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any, Iterator

logger = logging.getLogger(__name__)

DEFAULT_PORT = 7860
DEFAULT_HOST = "127.0.0.1"
SPACE_REQUIREMENTS = ("gradio>=6", "torch>=2.4", "transformers>=5.0,<6", "safetensors>=0.4")
SPACE_MAIN = '''

if __name__ == "__main__":  # a Hub Space runs `python app.py` from the repo root
    serve(os.path.dirname(os.path.abspath(__file__)), host="0.0.0.0", port=int(os.environ.get("PORT", 7860)),
          trust_remote_code=True)
'''
# No web fonts: the page must render offline (tests, air-gapped machines).
_FONTS = (["ui-sans-serif", "system-ui", "sans-serif"], ["ui-monospace", "monospace"])


# --------------------------------------------------------------------------------------------- model side


def check_port(host: str, port: int) -> int:
    """``port`` if it can be bound on ``host`` (0 picks a free one); ValueError naming the fix otherwise."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {port}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as err:
            raise ValueError(
                f"port {port} on {host} is already in use ({err.strerror}); pass --port with a free port, "
                "or --port 0 for any free one"
            ) from None
        return sock.getsockname()[1]


def load_model(model_path: str | Path, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """The causal LM (eval mode) and its tokenizer; a plain folder of ours loads without remote code."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import scratch_gpt  # noqa: F401  (registers the architecture; absent on a Space, where remote code is used)
    except ImportError:
        pass
    if not Path(model_path).is_dir():
        raise FileNotFoundError(f"model folder {model_path} does not exist; pass a folder written by save_pretrained")
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=trust_remote_code).eval()
    return model, tokenizer


class _StopOnEvent:
    """A ``StoppingCriteria`` that ends generation once ``event`` is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def sampling_kwargs(temperature: float, top_k: int, top_p: float, max_new_tokens: int) -> dict[str, Any]:
    """``generate`` options for the controls; temperature 0 is greedy decoding."""
    kwargs: dict[str, Any] = {"max_new_tokens": int(max_new_tokens), "do_sample": temperature > 0}
    if temperature > 0:
        kwargs.update(temperature=float(temperature), top_k=int(top_k) or None, top_p=float(top_p))
    else:
        kwargs.update(temperature=None, top_k=None, top_p=None)
    return kwargs


class Playground:
    """The model, its tokenizer and one stop event per browser session."""

    def __init__(self, model: Any, tokenizer: Any):
        self.model, self.tokenizer = model, tokenizer
        self.stops: dict[str, threading.Event] = {}
        self.context = int(getattr(model.config, "max_position_embeddings", 1024))

    def _event(self, session: str) -> threading.Event:
        event = self.stops.setdefault(session, threading.Event())
        event.clear()
        return event

    def stop(self, session: str) -> None:
        """End the session's running generation at the next token."""
        self.stops.setdefault(session, threading.Event()).set()

    def stream(self, ids: Any, session: str, seed: int, **kwargs: Any) -> Iterator[str]:
        """Yield the growing continuation of ``ids`` while ``generate`` runs in a worker thread."""
        import torch
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        room = self.context - ids.shape[1]
        if room < 1:
            raise ValueError(f"the prompt has {ids.shape[1]} tokens; this model reads at most {self.context}")
        kwargs["max_new_tokens"] = min(kwargs["max_new_tokens"], room)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = StoppingCriteriaList([_StopOnEvent(self._event(session))])
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        torch.manual_seed(int(seed))
        args = dict(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                    stopping_criteria=stop, pad_token_id=pad, **kwargs)
        errors: list[BaseException] = []
        worker = threading.Thread(target=self._generate, args=(args, errors), daemon=True)
        worker.start()
        text = ""
        try:
            for piece in streamer:
                text += piece
                yield text
        finally:  # also when Gradio abandons the stream: the worker stops at the next token
            stop[0].event.set()
            worker.join()
        if errors:
            raise errors[0]

    def _generate(self, args: dict[str, Any], errors: list[BaseException]) -> None:
        import torch

        try:
            with torch.no_grad():
                self.model.generate(**args)
        except Exception as err:  # noqa: BLE001  (re-raised in the streaming thread)
            errors.append(err)
            args["streamer"].end()

    def complete(self, prompt: str, session: str, seed: int = 0, **controls: Any) -> Iterator[str]:
        """Stream the continuation of a plain-text prompt."""
        ids = self.tokenizer(prompt, return_tensors="pt").input_ids
        if ids.shape[1] == 0:
            tok = self.tokenizer
            ids = ids.new_tensor([[tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]])
        yield from self.stream(ids, session, seed, **sampling_kwargs(**controls))

    def chat(self, messages: list[dict[str, Any]], session: str, seed: int = 0, **controls: Any) -> Iterator[str]:
        """Stream the assistant's reply to a conversation rendered by the chat template."""
        turns = [{"role": m["role"], "content": _text_of(m["content"])} for m in messages]
        ids = self.tokenizer.apply_chat_template(turns, add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)["input_ids"]
        yield from self.stream(ids, session, seed, **sampling_kwargs(**controls))


def _text_of(content: Any) -> str:
    """Gradio messages may carry content as a string or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content)


# --------------------------------------------------------------------------------------------- page


def _controls(gr: Any, context: int) -> list[Any]:
    with gr.Accordion("Sampling", open=True):
        with gr.Row():
            temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="temperature (0 = greedy)",
                                    elem_id="temperature")
            top_k = gr.Slider(0, 200, value=50, step=1, label="top-k (0 = all)", elem_id="top_k")
            top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top-p", elem_id="top_p")
        with gr.Row():
            max_new = gr.Slider(1, context, value=min(64, context), step=1, label="max new tokens",
                                elem_id="max_new_tokens")
            seed = gr.Number(value=0, precision=0, label="seed", elem_id="seed")
    return [temperature, top_k, top_p, max_new, seed]


def _completion_tab(gr: Any, play: Playground, controls: list[Any]) -> None:
    with gr.Tab("Completion"):
        prompt = gr.Textbox(label="Prompt", lines=4, elem_id="prompt")
        with gr.Row():
            run = gr.Button("Generate", variant="primary", elem_id="generate")
            halt = gr.Button("Stop", elem_id="stop")
        output = gr.Textbox(label="Completion", lines=12, elem_id="completion", interactive=False)

    def complete(text, temperature, top_k, top_p, max_new_tokens, seed, request: gr.Request):
        yield from play.complete(text, request.session_hash, seed=seed or 0, temperature=temperature, top_k=top_k,
                                 top_p=top_p, max_new_tokens=max_new_tokens)

    event = run.click(complete, [prompt, *controls], output, concurrency_limit=None)
    halt.click(_stopper(gr, play), None, None, cancels=[event])


def _stopper(gr: Any, play: Playground) -> Any:
    def stop(request: gr.Request) -> None:  # Gradio fills `request` from the annotation
        play.stop(request.session_hash)

    return stop


def _chat_tab(gr: Any, play: Playground, controls: list[Any]) -> None:
    with gr.Tab("Chat"):
        chatbot = gr.Chatbot(label="Chat", elem_id="chatbot", height=360)
        message = gr.Textbox(label="Message", elem_id="chat_message")
        with gr.Row():
            send = gr.Button("Send", variant="primary", elem_id="chat_send")
            halt = gr.Button("Stop", elem_id="chat_stop")

    def respond(text, history, temperature, top_k, top_p, max_new_tokens, seed, request: gr.Request):
        history = list(history or []) + [{"role": "user", "content": text}]
        reply = {"role": "assistant", "content": ""}
        for partial in play.chat(history, request.session_hash, seed=seed or 0, temperature=temperature,
                                 top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens):
            reply["content"] = partial
            yield history + [reply], ""

    event = send.click(respond, [message, chatbot, *controls], [chatbot, message], concurrency_limit=None)
    halt.click(_stopper(gr, play), None, None, cancels=[event])


def build_app(play: Playground, title: str = "scratch-gpt playground") -> Any:
    """The Gradio page: a completion tab, a chat tab when the tokenizer has a chat template."""
    import gradio as gr

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"## {title}")
        controls = _controls(gr, play.context)
        _completion_tab(gr, play, controls)
        if getattr(play.tokenizer, "chat_template", None):
            _chat_tab(gr, play, controls)
    return demo


def serve(
    model_path: str | Path,
    port: int = DEFAULT_PORT,
    host: str = DEFAULT_HOST,
    trust_remote_code: bool = False,
    block: bool = True,
) -> Any:
    """Check the port, load the model, launch the page; returns the running app when ``block`` is False."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    port = check_port(host, port)
    play = Playground(*load_model(model_path, trust_remote_code))
    demo = build_app(play, title=f"{Path(model_path).resolve().name} playground")
    theme = gr.themes.Default(font=_FONTS[0], font_mono=_FONTS[1])
    demo.queue(default_concurrency_limit=None)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=True, theme=theme,
                ssr_mode=False, footer_links=[])
    return demo


# --------------------------------------------------------------------------------------------- Space, CLI


def write_space(repo_dir: str | Path) -> list[str]:
    """Write ``app.py`` (this playground, verbatim, plus a ``__main__`` block) and ``requirements.txt``.

    Each file is written beside its name and renamed into place, so a repo never holds half a file.
    """
    repo_dir = Path(repo_dir)
    files = {
        "app.py": Path(__file__).read_text(encoding="utf-8") + SPACE_MAIN,
        "requirements.txt": "\n".join(SPACE_REQUIREMENTS) + "\n",
    }
    for name, text in files.items():
        partial = repo_dir / f".{name}.partial-{os.getpid()}"
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, repo_dir / name)
    return sorted(files)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``playground``."""
    p = subparsers.add_parser(
        "playground",
        help="Open a local web page to try a causal LM (completion, chat, streaming, stop).",
        description="Serve a Gradio playground for a model folder on this machine.",
    )
    p.add_argument("model", metavar="MODEL", help="model folder (a training run's model or an export)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT}; 0 = any free)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST})")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the folder (exports)")
    p.set_defaults(func=cmd_playground)


def cmd_playground(ns: argparse.Namespace) -> int:
    port = check_port(ns.host, ns.port)
    print(f"playground for {ns.model} on http://{ns.host}:{port} (Ctrl+C to stop)", flush=True)
    serve(ns.model, port=port, host=ns.host, trust_remote_code=ns.trust_remote_code)
    return 0
