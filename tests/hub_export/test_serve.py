"""`scratch-gpt serve` (transformers' own server) and stock `transformers serve`, on loopback ports.

One module-scoped fixture trains a tiny instruction model (Alpaca chat template, a small context of
:data:`CONTEXT` tokens), exports it twice (remote code and plain GPT-2) and starts three servers at once, each its
own process on a free 127.0.0.1 port: the run folder with ``--continuous-batching`` (loaded through
``AutoModelForCausalLM``), the remote-code export (``--trust-remote-code``, so the export's own modeling files run,
generating with ``generate()`` one request at a time), and stock ``transformers serve`` on the GPT-2 export. Every
answer is compared with ``pipeline()``'s greedy text on the run folder; answers
are capped at the context (``finish_reason`` "length"), and bad requests get a 400 with an OpenAI error body,
never a 500. Runs on every tested transformers version (the serving code differs between them:
``hub_export/serving_compat.py``).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import make_tiny_config
from tests.hub_export.conftest import REPO_ROOT, base_env, build_tokenizer

PROMPTS = ["The quick brown", "Every effort moves", "This is a fine", "The quick", "A tiny corpus",
           "Every", "fine example of", "moves you"]
CHAT = [{"role": "user", "content": "Every effort moves you"}]
NEW_TOKENS = 10
CONTEXT = 160  # small, yet above the Alpaca-templated chat prompt (~135 tokens) plus NEW_TOKENS
STARTUP_S = 360  # three servers (six processes with transformers 5.25) importing torch on a busy 2-core machine
REQUEST_S = 120


def _train_tiny_instruct_model(path: Path) -> Path:
    """A tiny model trained for a few steps on a few sentences, with the Alpaca chat template, saved to ``path``."""
    import torch

    from scratch_gpt import ScratchGPTForCausalLM
    from training.finetune.instruct import ALPACA_CHAT_TEMPLATE

    tok = build_tokenizer()
    tok.chat_template = ALPACA_CHAT_TEMPLATE
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(make_tiny_config(vocab_size=len(tok), max_position_embeddings=CONTEXT))
    text = "Every effort moves you forward. This is a fine example of a tiny corpus. The quick brown fox."
    ids = tok(text, return_tensors="pt").input_ids
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(30):
        model(input_ids=ids, labels=ids).loss.backward()
        optim.step()
        optim.zero_grad()
    model.eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=REQUEST_S) as resp:
        return json.loads(resp.read())


def _stream_chat(url: str, body: dict) -> str:
    """POST a streaming chat request and join the ``delta.content`` of every SSE chunk."""
    req = urllib.request.Request(url, data=json.dumps({**body, "stream": True}).encode(),
                                 headers={"Content-Type": "application/json"})
    text, chunks = "", 0
    with urllib.request.urlopen(req, timeout=REQUEST_S) as resp:
        for line in resp:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            payload = json.loads(line[len("data: "):])
            assert "error" not in payload, payload
            chunks += 1
            text += payload["choices"][0]["delta"].get("content") or ""
    assert chunks > 2, "expected a stream of several chunks"
    return text


def _ask(server: "Server", endpoint: str, body: dict) -> tuple[int, dict]:
    """POST ``body`` to ``/v1/{endpoint}``: ``(status, answer)``, the answer of a 200 (streamed or not) as
    ``{"text", "finish_reason", "usage"}``, of an error its JSON body."""
    stream = bool(body.get("stream"))
    if stream:
        body = {**body, "stream_options": {"include_usage": True}}
    req = urllib.request.Request(f"{server.url}/v1/{endpoint}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_S) as resp:
            events = [json.loads(line[len(b"data: "):]) for line in resp if line.startswith(b"data: {")] if stream \
                else [json.loads(resp.read())]
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
    answer = {"text": "", "finish_reason": None, "usage": None}
    for event in events:
        assert "error" not in event, event
        answer["usage"] = event.get("usage") or answer["usage"]
        for choice in event["choices"]:
            part = choice.get("text") or (choice.get("message") or choice.get("delta") or {}).get("content")
            answer["text"] += part or ""
            answer["finish_reason"] = choice.get("finish_reason") or answer["finish_reason"]
    return 200, answer


def _body(endpoint: str, prompt: str, **extra) -> dict:
    """A greedy request for ``prompt``: a raw prompt for completions, one user message for chat."""
    asked = {"prompt": prompt} if endpoint == "completions" else {"messages": [{"role": "user", "content": prompt}]}
    return {**asked, "temperature": 0, **extra}


class Server:
    """A server subprocess on a free loopback port; ``stop()`` terminates it (then kills it after 20 s)."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**base_env(log.parent), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        with open(log, "w") as fh:
            self.proc = subprocess.Popen([*argv, "--host", "127.0.0.1", "--port", str(self.port)], env=env,
                                         cwd=REPO_ROOT, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        raise AssertionError(f"server not ready in {STARTUP_S}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)


SCRATCH_SERVE = [sys.executable, "-m", "scratch_gpt_cli", "serve"]
STOCK_SERVE = [sys.executable, "-m", "transformers.cli.transformers", "serve"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The run folder, its two exports, and three running servers keyed by name."""
    from hub_export.export import export_model

    tmp = tmp_path_factory.mktemp("serve")
    run = _train_tiny_instruct_model(tmp / "run")
    servers = {  # each server starts as soon as its folder is written, while the next export is verified
        "run": Server([*SCRATCH_SERVE, str(run), "--continuous-batching", "--cb-num-blocks", "64"], tmp / "run.log"),
    }
    try:
        remote = export_model(run, tmp / "export-remote").out_dir
        servers["remote"] = Server([*SCRATCH_SERVE, str(remote), "--trust-remote-code"], tmp / "remote.log")
        gpt2 = export_model(run, tmp / "export-gpt2", export_format="gpt2").out_dir
        servers["stock-gpt2"] = Server([*STOCK_SERVE, str(gpt2)], tmp / "stock.log")
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    try:
        deadline = time.monotonic() + STARTUP_S
        for server in servers.values():
            server.wait_ready(deadline)
        yield {"run": run, "remote": remote, "gpt2": gpt2, "servers": servers}
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="module")
def reference(served):
    """``pipeline()``'s greedy text on the run folder: {prompt: text}, plus the chat answer under ``"chat"``."""
    from transformers import pipeline

    pipe = pipeline("text-generation", model=str(served["run"]), device="cpu")
    greedy = dict(max_new_tokens=NEW_TOKENS, do_sample=False)
    texts = {p: pipe(p, return_full_text=False, **greedy)[0]["generated_text"] for p in PROMPTS}
    texts["chat"] = pipe(CHAT, **greedy)[0]["generated_text"][-1]["content"]
    assert len(set(texts.values())) > 2, f"the tiny model should say different things: {texts}"
    return texts


def _completion(server: Server, prompt: str) -> str:
    body = {"prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0}
    return _post(f"{server.url}/v1/completions", body)["choices"][0]["text"]


@pytest.mark.parametrize("name", ["run", "remote", "stock-gpt2"])
def test_completions_equal_pipeline(served, reference, name):
    server = served["servers"][name]
    for prompt in PROMPTS[:3]:
        assert _completion(server, prompt) == reference[prompt], (name, prompt)


@pytest.mark.parametrize("name", ["run", "remote", "stock-gpt2"])
def test_streamed_chat_applies_template_and_equals_pipeline(served, reference, name):
    body = {"messages": CHAT, "max_tokens": NEW_TOKENS, "temperature": 0}
    assert _stream_chat(f"{served['servers'][name].url}/v1/chat/completions", body) == reference["chat"]


def test_non_streamed_chat_equals_pipeline(served, reference):
    body = {"messages": CHAT, "max_tokens": NEW_TOKENS, "temperature": 0}
    answer = _post(f"{served['servers']['run'].url}/v1/chat/completions", body)
    assert answer["choices"][0]["message"]["content"] == reference["chat"]


def test_remote_export_runs_its_own_code(served):
    """The export server loaded the export's shipped modeling file (transformers' dynamic module), not ours."""
    log = served["servers"]["remote"].log.read_text()
    assert "with its own modeling code" in log and "generates with generate()" in log
    modules = Path(base_env(served["servers"]["remote"].log.parent)["HF_HOME"]) / "modules" / "transformers_modules"
    assert list(modules.rglob("modeling_scratch_gpt.py")), "no dynamic module was created"


def test_continuous_batching_eight_concurrent_requests(served, reference):
    server = served["servers"]["run"]
    with ThreadPoolExecutor(max_workers=len(PROMPTS)) as pool:
        answers = list(pool.map(lambda p: _completion(server, p), PROMPTS))
    assert answers == [reference[p] for p in PROMPTS]
    assert "generates with continuous batching" in server.log.read_text()


ENDPOINTS = ["completions", "chat/completions"]
STREAM = pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])


SCRATCH_SERVERS = pytest.mark.parametrize("name", ["run", "remote"], ids=["batching", "generate"])


@STREAM
@SCRATCH_SERVERS
@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("max_tokens", [None, 10_000], ids=["no-max-tokens", "max-tokens-beyond-context"])
def test_answer_is_capped_at_the_context(served, name, endpoint, max_tokens, stream):
    """Without max_tokens (transformers would ask for 1024) or with too many, the answer ends at the context."""
    body = _body(endpoint, "Every effort moves", stream=stream)
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    status, answer = _ask(served["servers"][name], endpoint, body)
    assert status == 200, answer
    assert answer["finish_reason"] == "length" and answer["usage"]["total_tokens"] == CONTEXT, answer["usage"]


@STREAM
@SCRATCH_SERVERS
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_prompt_beyond_the_context_is_400_naming_the_limit(served, name, endpoint, stream):
    body = _body(endpoint, "Every effort moves you forward. " * 40, max_tokens=5, stream=stream)
    status, answer = _ask(served["servers"][name], endpoint, body)
    assert status == 400, answer
    error = answer["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "context_length_exceeded", error
    assert error["param"] == ("prompt" if endpoint == "completions" else "messages"), error
    assert f"this model's maximum context length is {CONTEXT} tokens; the prompt has " in error["message"], error


BAD_REQUESTS = [  # (endpoint, body, the param the error names)
    ("completions", {"prompt": "Every", "max_tokens": -1}, "max_tokens"),
    ("completions", {"prompt": "Every", "max_tokens": 0}, "max_tokens"),
    ("chat/completions", {"messages": CHAT, "max_tokens": -5}, "max_tokens"),
    ("chat/completions", {"messages": CHAT, "max_completion_tokens": 0}, "max_completion_tokens"),
    ("completions", {"prompt": "Every", "max_tokens": "10"}, "max_tokens"),
    ("completions", {"prompt": "Every", "temperature": [1]}, "temperature"),
    ("completions", {"prompt": "Every", "top_p": 3}, "top_p"),
    ("completions", {"prompt": ""}, "prompt"),
    ("completions", {"prompt": 5}, "prompt"),
    ("completions", {"prompt": "Every", "stop": ["a", 3]}, "stop"),
    ("completions", {"prompt": "Every", "generation_config": "{bad"}, "generation_config"),
    ("chat/completions", {}, "messages"),
    ("chat/completions", {"messages": [{"role": "user", "content": 5}]}, "messages"),
    ("chat/completions", {"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages"),
    ("chat/completions", {"messages": CHAT, "tools": "x"}, "tools"),
    ("chat/completions", {"messages": [{"role": "user", "content": "hi", "tool_calls": 5}]}, "messages"),
    ("chat/completions", {"messages": CHAT, "chat_template_kwargs": {"tokenize": False}}, "chat_template_kwargs"),
    ("chat/completions", {"messages": CHAT, "logit_bias": {"a": 1}}, "logit_bias"),
    ("chat/completions", {"messages": CHAT, "logit_bias": {"99999": 1}}, "logit_bias"),  # beyond the vocabulary
    ("completions", {"prompt": "Every", "stop": []}, "stop"),
    ("completions", {"prompt": "Every", "seed": 2**70}, "seed"),
    ("completions", {"prompt": "Every", "generation_config": '{"num_beams": 0}'}, "generation_config"),
    ("chat/completions", {"messages": CHAT, "model": "another/model"}, None),  # transformers' own ValueError
]


@STREAM
def test_bad_requests_are_400_with_an_openai_error_and_the_server_goes_on(served, reference, stream):
    server = served["servers"]["remote"]  # generate(), which fails where continuous batching ignores num_beams
    for endpoint, body, param in BAD_REQUESTS:
        status, answer = _ask(server, endpoint, {**body, "stream": stream})
        assert status == 400, (endpoint, body, answer)
        error = answer["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"], error
    status, answer = _ask(server, "completions", _body("completions", PROMPTS[0], max_tokens=NEW_TOKENS, stream=stream))
    assert status == 200 and answer["text"] == reference[PROMPTS[0]], answer
    assert answer["finish_reason"] == "length" and answer["usage"]["completion_tokens"] == NEW_TOKENS, answer


def test_invalid_json_keeps_its_422(served):
    req = urllib.request.Request(f"{served['servers']['run'].url}/v1/completions", data=b"{not json",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=REQUEST_S)
    assert caught.value.code == 422


def _cli_error(capsys, argv: list[str]) -> str:
    """Run ``scratch-gpt`` in this process; it must fail with exit 1 and one line on stderr, which is returned."""
    from scratch_gpt_cli import main

    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("scratch-gpt serve: error: ") and "\n" not in err, err
    return err


def test_missing_model_folder_is_one_clear_line(tmp_path, capsys):
    assert "does not exist" in _cli_error(capsys, ["serve", str(tmp_path / "nope")])


def test_port_in_use_is_one_clear_line(served, capsys):
    busy = served["servers"]["run"].port
    err = _cli_error(capsys, ["serve", str(served["run"]), "--host", "127.0.0.1", "--port", str(busy)])
    assert f"port {busy} on 127.0.0.1 is already in use: pick another with --port" in err


def test_model_folder_without_config_is_refused(tmp_path):
    from hub_export.serve import check_model

    with pytest.raises(FileNotFoundError, match="has no config.json"):
        check_model(str(tmp_path))
    check_model("owner/name")  # a Hub repo id passes to transformers' own loader


def test_untested_transformers_version_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    import transformers

    from hub_export import serving_compat

    monkeypatch.setattr(transformers, "__version__", "5.26.0")
    err = _cli_error(capsys, ["serve", str(tmp_path)])
    assert "tested with transformers 5.24.x, 5.25.x, not 5.26.0" in err and "pip install 'transformers==5.25.*'" in err
    assert serving_compat.tested_series("5.24.3") == "5.24" and serving_compat.tested_series("5.25.0") == "5.25"
    for version in ("5.23.1", "5.26.0.dev0", "5.25.0rc1", "6.0.0", "nonsense"):
        with pytest.raises(serving_compat.UnsupportedTransformersError, match=r"pip install 'transformers==5\.25\.\*'"):
            serving_compat.tested_series(version)


def test_fit_new_tokens_caps_at_the_context_left():
    from hub_export.serving_compat import RequestError, fit_new_tokens

    assert fit_new_tokens(prompt=10, context=CONTEXT, requested=None) == CONTEXT - 10  # "all of it"
    assert fit_new_tokens(prompt=10, context=CONTEXT, requested=5) == 5
    assert fit_new_tokens(prompt=CONTEXT - 1, context=CONTEXT, requested=1024) == 1
    assert fit_new_tokens(prompt=10, context=None, requested=7) == 7  # a config without max_position_embeddings
    for prompt, requested in ((CONTEXT, 5), (CONTEXT + 40, None), (10, 0)):
        with pytest.raises(RequestError):
            fit_new_tokens(prompt=prompt, context=CONTEXT, requested=requested)
