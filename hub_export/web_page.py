"""``scratch-gpt export MODEL OUT --format onnx --web``: a static page that runs the export in the browser.

The page is three files beside the ONNX export, plus the runtime copied from the npm package
``@huggingface/transformers`` (no CDN at run time, so it works offline and as a static Hub Space)::

    OUT/index.html                                 prompt box, Generate button, streamed output, tokens/s
    OUT/web/app.js                                 transformers.js pipeline("text-generation") on OUT itself
    OUT/web/transformers.min.js                    @huggingface/transformers/dist (the browser bundle)
    OUT/web/ort-wasm-simd-threaded.asyncify.mjs    onnxruntime-web/dist: the WASM runtime the bundle loads
    OUT/web/ort-wasm-simd-threaded.asyncify.wasm
    OUT/README.md                                  front matter of a static Hub Space (sdk: static)

Choices:

- **The model is the page's own folder:** ``env.localModelPath = "./"`` and the model id ``"."`` (not a Hub id,
  so transformers.js fetches ``./config.json``, ``./onnx/model.onnx``, ... relative to the page), with
  ``env.allowRemoteModels = false``: nothing is ever fetched from the Hub.
- **WASM from the folder:** ``env.backends.onnx.wasm.wasmPaths = "./web/"`` (resolved against the page); one
  thread unless the page is cross-origin isolated (threads need ``SharedArrayBuffer``, which a plain static server
  does not enable), and no proxy worker.
- **Where the runtime comes from** (:func:`find_web_assets`): ``--web-assets DIR`` (a ``node_modules`` folder, or a
  folder holding the four runtime files), else ``./node_modules``, the checkout's
  ``.ci/node-transformersjs/node_modules``, and ``npm root -g``. Missing: one line naming the npm command.
- **Greedy by default** (``do_sample: false``), so the page's text equals ``model.generate(do_sample=False)``;
  ``index.html?prompt=...&max_new_tokens=...&autorun=1`` fills the form and starts (what the test uses).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

logger = logging.getLogger(__name__)

TRANSFORMERSJS_VERSION = "4.3.2"
WEB_DIR = "web"
PAGE_FILE = "index.html"
README_FILE = "README.md"
README = """---
title: __YAML_TITLE__
sdk: static
app_file: index.html
library_name: transformers.js
pipeline_tag: text-generation
---

# __TITLE__

A scratch-gpt model that runs in the browser with transformers.js (`index.html`, everything in this folder, no
CDN). Serve the folder with any static file server (`python -m http.server -d .`), or upload it as a static
Space: `hf upload OWNER/NAME . --repo-type space`.
"""
APP_FILE = "app.js"
# file name -> its path inside node_modules (first match wins: npm may nest onnxruntime-web under transformers)
RUNTIME_FILES = {
    "transformers.min.js": ["@huggingface/transformers/dist/transformers.min.js"],
    **{
        name: [f"onnxruntime-web/dist/{name}", f"@huggingface/transformers/node_modules/onnxruntime-web/dist/{name}"]
        for name in ("ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm")
    },
}
INSTALL_HINT = (f"npm install @huggingface/transformers@{TRANSFORMERSJS_VERSION} (then run from that folder), "
                "or pass --web-assets DIR (a node_modules folder holding it)")

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__ - in your browser</title>
<style>
  body { font-family: ui-sans-serif, system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem;
         color: #1f2328; }
  textarea, #output { width: 100%; box-sizing: border-box; font-family: ui-monospace, monospace; font-size: .95rem; }
  textarea { height: 5rem; padding: .5rem; }
  #output { white-space: pre-wrap; min-height: 8rem; border: 1px solid #d0d7de; border-radius: 6px;
            padding: .5rem; background: #f6f8fa; }
  .row { display: flex; gap: .75rem; align-items: center; margin: .6rem 0; }
  button { padding: .4rem 1.2rem; font-size: 1rem; }
  #status, #speed { color: #57606a; font-size: .9rem; }
</style>
</head>
<body>
<h1>__TITLE__</h1>
<p>Runs on this device with <a href="https://huggingface.co/docs/transformers.js">transformers.js</a>
  (ONNX Runtime Web, WASM). Nothing leaves the page.</p>
<textarea id="prompt" aria-label="prompt">__PROMPT__</textarea>
<div class="row">
  <label>max new tokens <input id="max_new_tokens" type="number" min="1" max="2048" value="64"></label>
  <button id="generate" disabled>Generate</button>
  <span id="status">loading the model...</span>
</div>
<div id="output" aria-live="polite"></div>
<p id="speed"></p>
<script type="module" src="./web/app.js"></script>
</body>
</html>
"""

APP = """// The page's logic: transformers.js from ./web/, the model from the page's own folder, greedy decoding.
import { env, pipeline, TextStreamer } from "./transformers.min.js";

env.allowRemoteModels = false;  // never the Hub
env.allowLocalModels = true;
env.useBrowserCache = false;
env.localModelPath = "./";  // the model id "." is not a Hub id: files are fetched relative to the page
env.backends.onnx.wasm.wasmPaths = new URL("./", import.meta.url).href;  // the copies in ./web/
env.backends.onnx.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
env.backends.onnx.wasm.proxy = false;

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
if (params.has("prompt")) $("prompt").value = params.get("prompt");
if (params.has("max_new_tokens")) $("max_new_tokens").value = params.get("max_new_tokens");
const dtype = params.get("dtype") || "__DTYPE__";

function status(text, state) {
  $("status").textContent = text;
  document.body.dataset.state = state;
}

let generator;
try {
  const start = performance.now();
  generator = await pipeline("text-generation", ".", { dtype, device: "wasm" });
  document.body.dataset.loadSeconds = String((performance.now() - start) / 1000);
  status(`model loaded in ${Number(document.body.dataset.loadSeconds).toFixed(2)} s (${dtype})`, "ready");
  $("generate").disabled = false;
} catch (err) {
  status(`could not load the model: ${err.message || err}`, "error");
  throw err;
}

async function generate() {
  $("generate").disabled = true;
  $("output").textContent = "";
  $("speed").textContent = "";
  status("generating...", "generating");
  const times = [];
  const streamer = new TextStreamer(generator.tokenizer, {
    skip_prompt: true,
    callback_function: (text) => { $("output").textContent += text; },
    token_callback_function: () => { times.push(performance.now()); },
  });
  const start = performance.now();
  try {
    await generator($("prompt").value, {
      max_new_tokens: Number($("max_new_tokens").value), do_sample: false, streamer,
    });
  } catch (err) {
    status(`generation failed: ${err.message || err}`, "error");
    $("generate").disabled = false;
    return;
  }
  const n = times.length;
  const decode = n > 1 ? (n - 1) / ((times[n - 1] - times[0]) / 1000) : NaN;
  const speed = { tokens: n, first_token_s: n ? (times[0] - start) / 1000 : NaN, decode_tokens_per_s: decode };
  document.body.dataset.speed = JSON.stringify(speed);
  $("speed").textContent = `${n} tokens, ${decode.toFixed(1)} tokens/s decoding `
    + `(first token after ${speed.first_token_s.toFixed(2)} s)`;
  status("done", "done");
  $("generate").disabled = false;
}

$("generate").addEventListener("click", generate);
if (params.get("autorun") === "1") generate();
"""


def _candidate_roots(web_assets: Path | None):
    """Where to look for the runtime files, in order (see the module docstring); ``npm root -g`` only if needed."""
    if web_assets is not None:
        yield web_assets
        return
    yield Path.cwd() / "node_modules"
    yield Path(__file__).resolve().parents[1] / ".ci" / "node-transformersjs" / "node_modules"
    npm = shutil.which("npm")
    if npm:
        try:
            out = subprocess.run([npm, "root", "-g"], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            return
        if out.returncode == 0 and out.stdout.strip():
            yield Path(out.stdout.strip())


def _resolve(root: Path) -> dict[str, Path] | None:
    """The runtime files under ``root`` (a node_modules folder, or a flat folder of them), or None if incomplete."""
    found = {}
    for name, relative in RUNTIME_FILES.items():
        paths = [root / r for r in relative] + [root / name]
        found[name] = next((p for p in paths if p.is_file()), None)
    return None if None in found.values() else found


def find_web_assets(web_assets: str | Path | None = None) -> dict[str, Path]:
    """The transformers.js / onnxruntime-web files the page needs, by file name; ``ValueError`` (one line) if absent."""
    explicit = Path(web_assets) if web_assets is not None else None
    if explicit is not None and not explicit.is_dir():
        raise ValueError(f"--web-assets {explicit} is not a folder; pass the node_modules folder that holds "
                         f"@huggingface/transformers, or install it with {INSTALL_HINT}")
    for root in _candidate_roots(explicit):
        found = _resolve(root)
        if found is not None:
            _log_version(root)
            return found
    where = (f"in {explicit}" if explicit is not None
             else "(looked in ./node_modules, .ci/node-transformersjs, npm root -g)")
    raise ValueError(f"--web needs transformers.js's browser files and found none {where}: {INSTALL_HINT}")


def _log_version(root: Path) -> None:
    """Log the transformers.js version found (a different one may behave differently from the tested pin)."""
    package = root / "@huggingface" / "transformers" / "package.json"
    try:
        version = json.loads(package.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return
    log = logger.info if version == TRANSFORMERSJS_VERSION else logger.warning
    log("transformers.js %s from %s (tested: %s)", version, root, TRANSFORMERSJS_VERSION)


def write_web_page(folder: Path, assets: dict[str, Path], title: str, prompt: str, dtype: str = "fp32") -> list[str]:
    """Write ``index.html``, ``web/app.js`` and copies of ``assets`` into ``folder``; the relative paths written.

    ``dtype`` is the page's default file: ``fp32`` (``onnx/model.onnx``) or ``q8`` (``onnx/model_quantized.onnx``);
    ``?dtype=`` in the page's URL picks the other.
    """
    import html

    web = folder / WEB_DIR
    web.mkdir(parents=True, exist_ok=True)
    for name, source in assets.items():
        shutil.copyfile(source, web / name)
    page = PAGE.replace("__TITLE__", html.escape(title)).replace("__PROMPT__", html.escape(prompt))
    (folder / PAGE_FILE).write_text(page, encoding="utf-8")
    (web / APP_FILE).write_text(APP.replace("__DTYPE__", dtype), encoding="utf-8")
    readme = README.replace("__YAML_TITLE__", json.dumps(title)).replace("__TITLE__", title.replace("\n", " "))
    (folder / README_FILE).write_text(readme, encoding="utf-8")
    logger.info("wrote %s and %s/ (transformers.js in the browser, no CDN)", PAGE_FILE, WEB_DIR)
    return [PAGE_FILE, README_FILE, *(f"{WEB_DIR}/{name}" for name in (APP_FILE, *assets))]


__all__ = ["PAGE_FILE", "RUNTIME_FILES", "TRANSFORMERSJS_VERSION", "WEB_DIR", "find_web_assets", "write_web_page"]
