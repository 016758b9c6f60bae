"""`scratch-gpt serve` (transformers' own server) and stock `transformers serve`, on loopback ports.

One module-scoped fixture trains a tiny instruction model (Alpaca chat template), exports it twice (remote code
and plain GPT-2) and starts four servers at once, each its own process on a free 127.0.0.1 port: the run folder,
the remote-code export (``--trust-remote-code``, so the export's own modeling files run), stock
``transformers serve`` on the GPT-2 export, and the run folder with ``--continuous-batching``. Every answer is
compared with ``pipeline()``'s greedy text on the run folder.
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
STARTUP_S = 240  # four interpreters importing torch + transformers at once on a busy 2-core machine
REQUEST_S = 120


def _train_tiny_instruct_model(path: Path) -> Path:
    """A tiny model trained for a few steps on a few sentences, with the Alpaca chat template, saved to ``path``."""
    import torch

    from scratch_gpt import ScratchGPTForCausalLM
    from training.finetune.instruct import ALPACA_CHAT_TEMPLATE

    tok = build_tokenizer()
    tok.chat_template = ALPACA_CHAT_TEMPLATE
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(make_tiny_config(vocab_size=len(tok), max_position_embeddings=256))
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
    """The run folder, its two exports, and four running servers keyed by name."""
    from hub_export.export import export_model

    tmp = tmp_path_factory.mktemp("serve")
    run = _train_tiny_instruct_model(tmp / "run")
    servers = {  # the run-folder servers start while the exports are written and verified
        "run": Server([*SCRATCH_SERVE, str(run)], tmp / "run.log"),
        "cb": Server([*SCRATCH_SERVE, str(run), "--continuous-batching", "--cb-num-blocks", "64"], tmp / "cb.log"),
    }
    try:
        remote = export_model(run, tmp / "export-remote").out_dir
        gpt2 = export_model(run, tmp / "export-gpt2", export_format="gpt2").out_dir
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    servers["remote"] = Server([*SCRATCH_SERVE, str(remote), "--trust-remote-code"], tmp / "remote.log")
    servers["stock-gpt2"] = Server([*STOCK_SERVE, str(gpt2)], tmp / "stock.log")
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
    assert "with its own modeling code" in log
    modules = Path(base_env(served["servers"]["remote"].log.parent)["HF_HOME"]) / "modules" / "transformers_modules"
    assert list(modules.rglob("modeling_scratch_gpt.py")), "no dynamic module was created"


def test_continuous_batching_eight_concurrent_requests(served, reference):
    server = served["servers"]["cb"]
    with ThreadPoolExecutor(max_workers=len(PROMPTS)) as pool:
        answers = list(pool.map(lambda p: _completion(server, p), PROMPTS))
    assert answers == [reference[p] for p in PROMPTS]
    assert "CB: True" in server.log.read_text()


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
