"""`scratch-gpt export --format onnx --web`: the static page runs the export with transformers.js in Debian's
headless chromium (driven by Playwright, as the playground's tests are), served by a loopback static server;
its streamed greedy text equals ScratchGPT's, for a GPT-2- and a Llama-shaped model, and it fetches nothing
from anywhere but that server (no CDN, no Hub)."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from hub_export.onnx_export import export_onnx  # noqa: E402
from hub_export.web_page import PAGE_FILE, RUNTIME_FILES, WEB_DIR, find_web_assets  # noqa: E402
from tests.hub_export.conftest import REPO_ROOT, make_model_dir  # noqa: E402
from tests.hub_export.test_onnx import SHAPES, trained_model_dir  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ASSETS = REPO_ROOT / ".ci" / "node-transformersjs" / "node_modules"
NEW_TOKENS = 20
PROMPT = "Every effort moves you"


def _require_browser() -> None:
    """chromium, Playwright and the npm package; missing: a failure in CI, a skip elsewhere."""
    import importlib.util

    reason = ("Debian's chromium is not installed" if CHROMIUM is None else "playwright is not installed"
              if importlib.util.find_spec("playwright") is None else f"{ASSETS} lacks transformers.js (.ci/setup)"
              if not (ASSETS / "@huggingface" / "transformers").is_dir() else None)
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true"):
        pytest.fail(f"CI must run the browser check: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Both shapes exported with --web under one root (the GPT-2 one through the CLI, with --quant int8)."""
    from scratch_gpt_cli import main

    _require_browser()
    root = tmp_path_factory.mktemp("web")
    src = {name: trained_model_dir(root / "src" / name, **overrides) for name, overrides in SHAPES.items()}
    site = root / "site"
    assert main(["export", str(src["gpt2"]), str(site / "gpt2"), "--format", "onnx", "--quant", "int8",
                 "--web", "--web-assets", str(ASSETS)]) == 0
    export_onnx(src["llama"], site / "llama", web=True, web_assets=ASSETS)
    return {name: (src[name], site / name) for name in SHAPES}


@pytest.fixture(scope="module")
def server(exports):
    """A loopback static file server over the exports' parent folder (each page lives below the root)."""
    site = next(iter(exports.values()))[1].parent
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


def _greedy_continuation(src: Path) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(src).eval(), AutoTokenizer.from_pretrained(src)
    ids = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=NEW_TOKENS, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def run_page(browser, url: str, timeout_ms: int = 90_000) -> tuple[dict, list[str]]:
    """Open ``url`` (autorun), wait until it is done; the page's state, output and speed, and every URL fetched."""
    page = browser.new_page()
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("pageerror", lambda err: errors.append(str(err)))
    try:
        page.goto(url)
        page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)", timeout=timeout_ms)
        result = page.evaluate("""() => ({state: document.body.dataset.state,
            status: document.getElementById('status').textContent, output: document.getElementById('output').textContent, speed: document.body.dataset.speed})""")
    finally:
        page.close()
    assert result["state"] == "done", (result, errors)
    return result, requests


@pytest.mark.parametrize("shape", SHAPES)
def test_page_generates_scratchgpts_greedy_text_from_its_own_folder(exports, server, browser, shape):
    from urllib.parse import urlencode

    src, out = exports[shape]
    query = urlencode({"prompt": PROMPT, "max_new_tokens": NEW_TOKENS, "autorun": 1, "dtype": "fp32"})
    result, requests = run_page(browser, f"{server}/{shape}/{PAGE_FILE}?{query}")
    assert result["output"] == _greedy_continuation(src)
    speed = json.loads(result["speed"])
    assert speed["tokens"] == NEW_TOKENS and speed["decode_tokens_per_s"] > 0
    # everything came from the export folder itself: no CDN, no Hub
    assert requests and all(url.startswith(f"{server}/{shape}/") for url in requests), requests
    assert f"{server}/{shape}/{WEB_DIR}/ort-wasm-simd-threaded.asyncify.wasm" in requests


def test_page_opens_the_int8_file_by_default_and_still_matches(exports, server, browser):
    """With --quant int8 the page's default is the q8 file (the smaller download); its greedy text still equals
    ScratchGPT's fp32 text for this model (as the Node test requires of the same file)."""
    from urllib.parse import urlencode

    src, _ = exports["gpt2"]
    query = urlencode({"prompt": PROMPT, "max_new_tokens": NEW_TOKENS, "autorun": 1})
    result, requests = run_page(browser, f"{server}/gpt2/{PAGE_FILE}?{query}")
    assert f"{server}/gpt2/onnx/model_quantized.onnx" in requests
    assert f"{server}/gpt2/onnx/model.onnx" not in requests
    assert result["output"] == _greedy_continuation(src)


def test_the_folder_holds_the_page_and_the_runtime(exports):
    _, out = exports["gpt2"]
    assert (out / PAGE_FILE).is_file() and (out / WEB_DIR / "app.js").is_file()
    for name in RUNTIME_FILES:
        assert (out / WEB_DIR / name).stat().st_size == (find_web_assets(ASSETS)[name]).stat().st_size
    assert "cdn" not in (out / WEB_DIR / "app.js").read_text().lower()
    front = (out / "README.md").read_text().split("---")[1]  # a static Hub Space serves index.html
    assert "sdk: static" in front and "app_file: index.html" in front


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--format", "gguf", "--web"], "--web and --web-assets apply to --format onnx only"),
        (["--format", "onnx", "--web-assets", "x"], "--web-assets is for --web"),
        (["--format", "onnx", "--web", "--web-assets", "{tmp}/nowhere"], "is not a folder"),
        (["--format", "onnx", "--web", "--web-assets", "{tmp}"], "npm install @huggingface/transformers@4.3.2"),
    ],
)
def test_cli_refusals_are_one_line_and_write_nothing(tmp_path, capsys, extra, message):
    from scratch_gpt_cli import main

    src = make_model_dir(tmp_path / "src")
    capsys.readouterr()
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    assert main(["export", str(src), str(tmp_path / "out"), *extra]) in (1, 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_assets_are_found_in_a_node_modules_folder_or_a_flat_folder_of_the_files(tmp_path):
    _require_browser()
    found = find_web_assets(ASSETS)
    assert sorted(found) == sorted(RUNTIME_FILES)
    flat = tmp_path / "flat"
    flat.mkdir()
    for name, path in found.items():
        (flat / name).symlink_to(path)
    assert {name: p.name for name, p in find_web_assets(flat).items()} == {name: name for name in RUNTIME_FILES}
    (flat / "transformers.min.js").unlink()
    with pytest.raises(ValueError, match="npm install @huggingface/transformers@4.3.2"):
        find_web_assets(flat)
