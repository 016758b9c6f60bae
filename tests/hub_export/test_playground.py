"""The playground in a real headless browser (Playwright + Debian's chromium): streaming, greedy parity, stop."""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROMPT = "def add(a, b):"
SLOW_STEP_S = 0.02  # a forward pre-hook makes each decoding step this slow, so streaming and stopping are visible
LONG = 900  # tokens asked for in the stop test (the hook makes that ~18 s; it is stopped after a few tokens)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny trained model (its text has spaces and newlines, where the streamer flushes), long context;
    its generation_config forbids EOS before LONG tokens so a long generation really is long."""
    from transformers import GenerationConfig

    from tests.hub_export.test_gguf import train_tiny_lm

    path = train_tiny_lm(tmp_path_factory.mktemp("playground") / "model", steps=100)
    config = GenerationConfig.from_pretrained(path)
    config.min_new_tokens = LONG
    config.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "install Debian's chromium (.ci/setup does: apt-get install -y chromium)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _slowed(load_model):
    """Wrap a module's load_model so every forward pass sleeps SLOW_STEP_S (visible streaming, time to stop)."""

    def load(*args, **kwargs):
        model, tokenizer = load_model(*args, **kwargs)
        model.register_forward_pre_hook(lambda module, inputs: time.sleep(SLOW_STEP_S))
        return model, tokenizer

    return load


def _greedy_pipeline(path: Path, n: int, **kwargs) -> str:
    from transformers import pipeline

    import scratch_gpt  # noqa: F401

    pipe = pipeline("text-generation", model=str(path), **kwargs)
    return pipe(PROMPT, max_new_tokens=n, do_sample=False, return_full_text=False)[0]["generated_text"]


def _open(browser, port: int):
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{port}/")
    page.locator("#prompt textarea").wait_for(timeout=60_000)  # the page has rendered
    return page


def _set_slider(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def _generate_and_watch(page, expected: str, timeout_s: float = 60) -> list[str]:
    """Type the prompt, press Generate, and record each distinct text the output shows until it is complete."""
    page.locator("#prompt textarea").fill(PROMPT)
    _set_slider(page, "max_new_tokens", 24)
    page.locator("#generate").click()
    output, seen = page.locator("#completion textarea"), []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (not seen or seen[-1] != expected):
        value = output.input_value()
        if value and (not seen or value != seen[-1]):
            seen.append(value)
        page.wait_for_timeout(15)
    return seen


def _check_streamed(seen: list[str], expected: str) -> None:
    assert seen and seen[-1] == expected, (seen[-1:], expected)
    assert len(seen) >= 3, f"the text did not grow while streaming: {seen}"
    assert all(later.startswith(earlier) for earlier, later in zip(seen, seen[1:])), seen


def _stop_during_long_generation(page) -> str:
    _set_slider(page, "max_new_tokens", LONG)
    page.locator("#generate").click()
    output = page.locator("#completion textarea")
    first = ""
    for _ in range(400):  # wait for the new generation to show some text
        first = output.input_value()
        if first and not first.startswith(PROMPT) and len(first) > 5:
            break
        page.wait_for_timeout(25)
    page.locator("#stop").click()
    page.wait_for_timeout(1500)
    stopped = output.input_value()
    page.wait_for_timeout(1500)
    assert output.input_value() == stopped, "text kept growing after Stop"
    return stopped


def test_playground_streams_greedy_text_and_stops(model_dir, browser, tmp_path, monkeypatch):
    from hub_export import playground

    monkeypatch.setattr(playground, "load_model", _slowed(playground.load_model))
    expected = _greedy_pipeline(model_dir, 24)
    port = _free_port()
    demo = playground.serve(model_dir, port=port, block=False)
    try:
        page = _open(browser, port)
        assert page.get_by_role("tab", name="Completion").count() == 1
        assert page.get_by_role("tab", name="Chat").count() == 0  # no chat template, no chat tab
        _check_streamed(_generate_and_watch(page, expected), expected)
        stopped = _stop_during_long_generation(page)
        from transformers import AutoTokenizer

        assert 0 < len(AutoTokenizer.from_pretrained(model_dir)(stopped).input_ids) < LONG // 2
        page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)
        assert (tmp_path / "playground.png").stat().st_size > 1000
    finally:
        demo.close()


def test_space_app_runs_the_same_playground(model_dir, browser, tmp_path, monkeypatch):
    """`export --space`: app.py is imported from the exported repo and launched like a Space."""
    from transformers import AutoTokenizer

    from scratch_gpt_cli import main

    src = tmp_path / "src"
    shutil.copytree(model_dir, src)
    tok = AutoTokenizer.from_pretrained(src)
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    tok.save_pretrained(src)
    repo = tmp_path / "repo"
    assert main(["export", str(src), str(repo), "--space"]) == 0  # scratch-gpt export SRC REPO --space
    assert (repo / "app.py").read_text().startswith('"""A browser playground')
    assert "gradio" in (repo / "requirements.txt").read_text()
    spec = importlib.util.spec_from_file_location("space_app", repo / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    monkeypatch.setattr(app, "load_model", _slowed(app.load_model))
    expected = _greedy_pipeline(repo, 24, trust_remote_code=True)
    port = _free_port()
    demo = app.serve(str(repo), port=port, block=False, trust_remote_code=True)
    try:
        page = _open(browser, port)
        assert page.get_by_role("tab", name="Chat").count() == 1  # the tokenizer has a chat template
        _check_streamed(_generate_and_watch(page, expected), expected)
        page.get_by_role("tab", name="Chat").click()
        page.locator("#chat_message textarea").fill("def add(a, b):")
        page.locator("#chat_send").click()
        reply = '#chatbot [data-testid="bot"]'
        page.locator(reply).first.wait_for(timeout=60_000)  # the assistant's message appears and fills in
        page.wait_for_function(f"() => document.querySelector('{reply}').innerText.trim().length > 5")
    finally:
        demo.close()


def test_port_in_use_is_one_clear_line(model_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "scratch_gpt_cli", "playground", str(model_dir), "--port", str(port)],
            capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2],
        )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"port {port} on 127.0.0.1 is already in use" in lines[0], result.stderr
    assert "pass --port with a free port" in lines[0]


def test_chat_reply_is_the_greedy_continuation_of_the_template(model_dir):
    """The chat tab's function (no browser): the reply is greedy generation on the chat-template prompt."""
    from hub_export.playground import Playground, load_model

    model, tok = load_model(model_dir)
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    messages = [{"role": "user", "content": [{"type": "text", "text": "def add(a, b):"}]}]
    reply = list(Playground(model, tok).chat(messages, "s", temperature=0, top_k=50, top_p=1.0, max_new_tokens=12))
    ids = tok.apply_chat_template([{"role": "user", "content": "def add(a, b):"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    assert reply[-1] == tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_sampling_controls_and_seed(model_dir):
    """temperature > 0 samples with top-k/top-p; the same seed gives the same text, another seed another."""
    from hub_export.playground import Playground, load_model, sampling_kwargs

    assert sampling_kwargs(0, 50, 0.9, 8) == {"max_new_tokens": 8, "do_sample": False, "temperature": None,
                                              "top_k": None, "top_p": None}
    assert sampling_kwargs(0.7, 0, 0.9, 8)["top_k"] is None  # 0 = all tokens
    play = Playground(*load_model(model_dir))
    run = lambda seed: list(play.complete(PROMPT, "s", seed=seed, temperature=1.5, top_k=0, top_p=1.0,  # noqa: E731
                                          max_new_tokens=16))[-1]
    assert run(1) == run(1) and run(1) != run(2)


def test_missing_model_folder_is_one_clear_line(tmp_path, capsys):
    from scratch_gpt_cli import main

    assert main(["playground", str(tmp_path / "nope"), "--port", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist; pass a folder written by save_pretrained" in err[0], err
