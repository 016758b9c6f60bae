"""Issue 11, acceptance 1: every row of tests/safety_catalogue.py fails cleanly and destroys nothing.

Each row runs one ``scratch-gpt`` command against a fresh copy of a small workspace (corpora, tokenizers,
models, a finished run) and asserts: a non-zero exit (the row's code), no traceback, exactly one error line
naming the culprit (the row's words), and every file and folder under the workspace unchanged except the
outputs the command was asked to write. Rows run in-process through ``scratch_gpt_cli.main`` (fast); the
disk-full and read-only rows run in one subprocess inside a private mount namespace (``unshare``), where a
tiny tmpfs or a read-only bind mount gives the real errno. Where namespaces are unavailable they fall back to an
injected ``ENOSPC`` / a chmod (non-root) or a refused ``os.access`` (root).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import scratch_gpt_cli
from tests.conftest import make_tiny_config
from tests.safety_catalogue import ROWS, Row

REPO = Path(__file__).resolve().parents[1]
_STDLIB_FILES = ("textwrap.py", "glob.py", "fnmatch.py")
_CLS_TEXTS = ["free prize call now", "see you at lunch", "win cash today", "meeting moved to noon"]


# -- the workspace ----------------------------------------------------------------------------------------


def _write_corpora(ws: Path) -> None:
    stdlib = Path(shutil.__file__).parent
    (ws / "corpus").mkdir()
    for name in _STDLIB_FILES:
        shutil.copy(stdlib / name, ws / "corpus" / name)
    (ws / "corpus.txt").write_text((stdlib / "glob.py").read_text(encoding="utf-8"), encoding="utf-8")
    (ws / "empty.txt").write_bytes(b"")
    (ws / "blank.txt").write_text("\n  \n\t\n")
    (ws / "latin1.txt").write_bytes("Caf\u00e9 au lait, cr\u00e8me br\u00fbl\u00e9e.\n".encode("latin-1") * 50)
    (ws / "bad.yaml").write_text("max_steps: lots\n")
    rows = [f"{_CLS_TEXTS[i % 4]} {i},{'spam' if i % 2 == 0 else 'ham'}" for i in range(40)]
    (ws / "cls.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    (ws / "cls_one.csv").write_text("text,label\n" + "\n".join(r.rsplit(",", 1)[0] + ",ham" for r in rows) + "\n")
    sms = "".join(f"{('ham', 'spam')[i % 2]}\tCaf\u00e9 ol\u00e9 {i}\n" for i in range(30))
    (ws / "sms_latin1.txt").write_bytes(sms.encode("latin-1"))
    records = [{"instruction": f"Repeat {i}", "input": "", "output": f"{i}"} for i in range(20)]
    (ws / "instruct.json").write_text(json.dumps(records))
    latin = json.dumps([{**r, "output": "caf\u00e9"} for r in records], ensure_ascii=False)
    (ws / "instruct_latin1.json").write_bytes(latin.encode("latin-1"))
    (ws / "instruct_empty.json").write_text("[]")
    prefs = [{"prompt": f"Say {i}", "chosen": f"{i}", "rejected": "no"} for i in range(10)]
    (ws / "prefs.json").write_text(json.dumps(prefs))
    (ws / "instruct_bad.json").write_text(json.dumps([records[0], {"instruction": "no answer"}]))


def _write_models(ws: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer, BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    from scratch_gpt import ScratchGPTForCausalLM
    from training.data.tokenizer import train_tokenizer

    texts = [(ws / "corpus" / n).read_text(encoding="utf-8") for n in _STDLIB_FILES]
    tok = train_tokenizer(texts, vocab_size=320, min_frequency=2, model_max_length=64)
    tok.save_pretrained(ws / "tok")
    train_tokenizer(texts, vocab_size=600, min_frequency=1, model_max_length=64).save_pretrained(ws / "bigtok")
    torch.manual_seed(0)
    for name in ("model", "run", "truncated", "badtypes"):
        ScratchGPTForCausalLM(make_tiny_config()).save_pretrained(ws / name)
        tok.save_pretrained(ws / name)
    ScratchGPTForCausalLM(make_tiny_config()).save_pretrained(ws / "bigvocab")
    AutoTokenizer.from_pretrained(ws / "bigtok").save_pretrained(ws / "bigvocab")
    (ws / "run" / "training_args.json").write_text(json.dumps({"preset": "tiny", "max_steps": 2}))
    (ws / "run" / "train_results.json").write_text(json.dumps({"train_loss": 5.0}))
    weights = (ws / "truncated" / "model.safetensors").read_bytes()
    (ws / "truncated" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    config = json.loads((ws / "badtypes" / "config.json").read_text())
    (ws / "badtypes" / "config.json").write_text(json.dumps({**config, "hidden_size": "32"}))
    gpt2 = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=320, bos_token_id=0, eos_token_id=0)
    for name in ("gpt2", "gpt2_missing", "badgpt2", "ro/gpt2", "ro/old"):
        GPT2LMHeadModel(gpt2).save_pretrained(ws / name)
        tok.save_pretrained(ws / name)
    weights = load_file(ws / "gpt2_missing" / "model.safetensors")
    del weights["transformer.h.0.mlp.c_fc.bias"]
    save_file(weights, ws / "gpt2_missing" / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((ws / "badgpt2" / "config.json").read_text())
    (ws / "badgpt2" / "config.json").write_text(json.dumps({**config, "n_embd": "32"}))
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                         vocab_size=320)).save_pretrained(ws / "bert")


def build_workspace(ws: Path) -> Path:
    """The catalogue's inputs (described in tests/safety_catalogue.py)."""
    ws.mkdir(parents=True)
    _write_corpora(ws)
    _write_models(ws)
    for name in ("emptydir", "full"):
        (ws / name).mkdir()
    return ws


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    import datasets
    import torch

    old_cache, old_threads = datasets.config.HF_DATASETS_CACHE, torch.get_num_threads()
    datasets.config.HF_DATASETS_CACHE = tmp_path_factory.mktemp("datasets_cache")
    torch.set_num_threads(1)
    yield build_workspace(tmp_path_factory.mktemp("catalogue") / "ws")
    datasets.config.HF_DATASETS_CACHE = old_cache
    torch.set_num_threads(old_threads)


# -- running a row ----------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with the sha256 of its bytes ("dir" for folders)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _changed(before: dict[str, str], after: dict[str, str], writes: tuple[str, ...]) -> list[str]:
    allowed = tuple(writes)
    return [
        key for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key) and not any(key == w or key.startswith(w + "/") for w in allowed)
    ]


def _namespace_prefix() -> list[str] | None:
    """``unshare`` arguments that give a private mount namespace where mounts are allowed, or None
    (``SCRATCH_GPT_TEST_NO_NAMESPACE=1`` forces the in-process fallback, to test it where unshare works)."""
    if os.environ.get("SCRATCH_GPT_TEST_NO_NAMESPACE") == "1":
        return None
    for prefix in (["unshare", "-m"], ["unshare", "-rm"]):
        if shutil.which("unshare") is None:
            return None
        probe = subprocess.run([*prefix, "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt 2>/dev/null || "
                                "mount -t tmpfs -o size=4k tmpfs /tmp"], capture_output=True)
        if probe.returncode == 0:
            return prefix
    return None


_MOUNTS = {
    "full": "mount -t tmpfs -o size=32k tmpfs {ws}/full",
    "rofs": "mount --bind {ws}/ro {ws}/ro && mount -o remount,bind,ro {ws}/ro",
}


# One process runs every sandboxed row (importing the CLI once), each against its own workspace copy.
_SANDBOX_DRIVER = r"""
import contextlib, io, json, os, sys, traceback
import scratch_gpt_cli
results = {}
for item in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            rc = scratch_gpt_cli.main(item["argv"])
        except SystemExit as exit_:
            rc = exit_.code
        except BaseException:
            traceback.print_exc(file=err)
            rc = None
    left = sorted(os.listdir(item["full"])) if os.path.isdir(item["full"]) else []
    results[item["id"]] = {"rc": rc, "err": err.getvalue(), "left": left}
print("RESULTS:" + json.dumps(results))
"""


def _run_sandboxed(rows: list[Row], template: Path, root: Path, prefix: list[str]) -> dict:
    """Every sandboxed row in one namespace: ``{row id: (workspace, snapshot before, result)}``."""
    import shlex

    items, before, mounts = [], {}, []
    for row in rows:
        assert not row.env, "sandboxed rows share one process: no per-row environment"
        ws = root / row.id
        shutil.copytree(template, ws, symlinks=True)
        before[row.id] = snapshot(ws)
        mounts.append(_MOUNTS[row.sandbox].format(ws=shlex.quote(str(ws))))
        items.append({"id": row.id, "argv": [a.replace("{ws}", str(ws)) for a in row.args], "full": str(ws / "full")})
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []  # the cwd (a scratch folder) off sys.path
    driver = " ".join(shlex.quote(a) for a in [sys.executable, *safe_path, "-c", _SANDBOX_DRIVER, json.dumps(items)])
    script = f"{{ {' && '.join(mounts)}; }} || exit 97\n{driver}\n"
    env = {**os.environ, "SCRATCH_GPT_MALLOC_TUNING": "0"}
    result = subprocess.run([*prefix, "sh", "-c", script], capture_output=True, text=True, cwd=root, env=env,
                            timeout=600)
    assert result.returncode == 0 and "RESULTS:" in result.stdout, result.stderr[-3000:]
    data = json.loads(result.stdout.rsplit("RESULTS:", 1)[1])
    return {row.id: (root / row.id, before[row.id], data[row.id]) for row in rows}


@pytest.fixture(scope="module")
def sandboxed(template, tmp_path_factory, namespace_prefix):
    """The results of the sandboxed rows (None where mount namespaces are unavailable: rows run in-process)."""
    if not namespace_prefix:
        return None
    rows = [row for row in ROWS if row.sandbox]
    return _run_sandboxed(rows, template, tmp_path_factory.mktemp("sandboxed"), namespace_prefix)


def _run_in_process(row: Row, argv: list[str], ws: Path, capsys, monkeypatch) -> tuple[int, str]:
    for key, value in row.env.items():
        monkeypatch.setenv(key, value)
    if row.sandbox:
        _inject_fallback(row.sandbox, ws, monkeypatch)
    try:
        rc = scratch_gpt_cli.main(argv)
    except SystemExit as exit_:  # argparse
        rc = exit_.code
    return rc, capsys.readouterr().err


def _inject_fallback(sandbox: str, ws: Path, monkeypatch) -> None:
    """Without mount namespaces: a full disk is an ENOSPC from fsync; read-only is chmod (or a refused access)."""
    from scratch_gpt import safe_output

    if sandbox == "full":
        def full(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

        monkeypatch.setattr(safe_output, "fsync_tree", full)
    elif os.geteuid() != 0:
        for path in [ws / "ro", *(ws / "ro").rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
    else:
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p).startswith(str(ws / "ro")) else real(p, mode, **kw))


@pytest.fixture(scope="module")
def namespace_prefix():
    return _namespace_prefix()


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_catalogue_row(row: Row, template, tmp_path, capsys, monkeypatch, sandboxed):
    if row.sandbox and sandboxed:
        ws, before, result = sandboxed[row.id]
        rc, err = result["rc"], result["err"]
        assert not result["left"], f"the full disk kept {result['left']}"  # the failed write cleaned up
    else:
        ws = tmp_path / "ws"
        shutil.copytree(template, ws, symlinks=True)
        monkeypatch.chdir(ws)
        before = snapshot(ws)
        rc, err = _run_in_process(row, [a.replace("{ws}", str(ws)) for a in row.args], ws, capsys, monkeypatch)
        if row.sandbox == "rofs" and os.geteuid() != 0:
            for path in [ws / "ro", *(ws / "ro").rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("scratch-gpt ")]
    assert rc == row.exit, f"exit {rc}, expected {row.exit}; stderr: {err[-2000:]}"
    assert len(lines) == 1, f"expected one error line, got: {err[-2000:]}"
    missing = [w for w in row.words if w.lower() not in lines[0].lower()]
    assert not missing, f"error line lacks {missing}: {lines[0]}"
    assert _changed(before, snapshot(ws), row.writes) == []


def test_catalogue_covers_every_subcommand():
    parser = scratch_gpt_cli.build_parser()
    commands = set(next(a for a in parser._actions if a.dest == "command").choices)
    finetune = next(a for a in parser._actions if a.dest == "command").choices["finetune"]
    tasks = set(next(a for a in finetune._actions if a.dest == "finetune_command").choices)
    commands |= {f"finetune {task}" for task in tasks}
    covered = {r.args[0] for r in ROWS} | {" ".join(r.args[:2]) for r in ROWS if r.args[0] == "finetune"}
    assert len(ROWS) >= 40
    assert commands <= covered, f"no catalogue row for {sorted(commands - covered)}"


# -- the allocator re-exec runs the installed code, never the working directory's (issue 11, point 5) ------


def _console_script() -> str:
    beside = Path(sys.executable).parent / "scratch-gpt"
    found = str(beside) if beside.is_file() else shutil.which("scratch-gpt")
    assert found, "the scratch-gpt console script is not installed (pip install -e .)"
    return found


def test_reexec_never_runs_code_from_the_working_directory(tmp_path):
    hostile, marker = tmp_path / "downloads", tmp_path / "HIJACKED"
    for rel in ("scratch_gpt_cli.py", "training/__init__.py", "scratch_gpt/__init__.py", "hub_export/__init__.py"):
        (hostile / rel).parent.mkdir(parents=True, exist_ok=True)
        (hostile / rel).write_text(f"open({str(marker)!r}, 'a').write({rel!r} + '\\n')\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "SCRATCH_GPT_REEXECED", "SCRATCH_GPT_MALLOC_TUNING",
                        "PYTHONPATH", "PYTHONSAFEPATH")}
    missing = tmp_path / "missing.txt"
    result = subprocess.run([_console_script(), "train", "--dataset", str(missing), "--output-dir", str(tmp_path / "o")],
                            cwd=hostile, env=env, capture_output=True, text=True, timeout=600)
    assert not marker.exists(), f"code from the working directory ran: {marker.read_text()}"
    assert result.returncode == 1 and "missing.txt" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    # control: the same folder does take over a plain `python -m`, so the check above can fail
    subprocess.run([sys.executable, "-m", "scratch_gpt_cli", "--help"], cwd=hostile, env=env, capture_output=True,
                   timeout=600)
    assert "scratch_gpt_cli.py" in marker.read_text()


# -- the CLI's error mapping (scratch_gpt_cli.describe_failure) -------------------------------------------


def _described(err, **args):
    import argparse

    return scratch_gpt_cli.describe_failure(err, argparse.Namespace(command="x", **args))


def test_expected_failures_map_to_one_line_with_the_file_and_the_fix():
    import httpx
    from huggingface_hub.errors import OfflineModeIsEnabled

    cases = [
        (OSError(errno.ENOSPC, "No space left on device", "/data/out"), 1, ["no space left", "/data/out"]),
        (PermissionError(errno.EACCES, "Permission denied", "/data/x"), 1, ["permission denied: /data/x", "choose"]),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/d/m"), 1, ["no such file", "/d/m"]),
        (OSError(errno.EROFS, "Read-only file system", "/ro/out"), 1, ["read-only", "/ro/out"]),
        (FileExistsError("out exists; pass --overwrite"), 1, ["--overwrite"]),
        (OfflineModeIsEnabled("offline"), 1, ["hub", "connection"]),
        (httpx.ConnectError("connection refused"), 1, ["hub", "connection"]),
        (RuntimeError("Torch not compiled with CUDA enabled"), 1, ["cuda", "--device cpu"]),
        (AssertionError("Torch not compiled with CUDA enabled"), 1, ["cuda", "--device cpu"]),
        (Exception("No space left on device (os error 28)"), 1, ["no space left", "out/tok"]),
        (ValueError("--top-p must be in (0, 1], got 1.5"), 2, ["--top-p"]),
        (ValueError("the corpus c.txt is empty"), 1, ["c.txt"]),
    ]
    for err, code, words in cases:
        got = _described(err, out_dir="out/tok")
        assert got is not None and got[0] == code, (err, got)
        assert "\n" not in got[1] and all(w.lower() in got[1].lower() for w in words), (err, got)
    try:
        b"caf\xe9 au lait".decode("utf-8")
    except UnicodeDecodeError as err:
        code, message = _described(err)
        assert code == 1 and "byte offset 3" in message and "iconv" in message


def test_bugs_keep_their_traceback():
    assert _described(RuntimeError("index out of range in self")) is None
    assert _described(KeyError("hidden")) is None
    assert _described(AssertionError("shapes differ")) is None


@pytest.mark.parametrize("how", ["-v", "env"])
def test_debug_shows_the_traceback(how, tmp_path, monkeypatch):
    argv = ["generate", str(tmp_path / "nomodel") + "/", "--max-new-tokens", "2"]
    if how == "env":
        monkeypatch.setenv("SCRATCH_GPT_DEBUG", "1")
    else:
        argv.insert(0, "-v")
    with pytest.raises(FileNotFoundError, match="nomodel"):
        scratch_gpt_cli.main(argv)


def test_interrupt_is_one_line_and_a_bug_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    from training.generate import commands

    def interrupted(ns):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "cmd_generate", interrupted)
    assert scratch_gpt_cli.main(["generate", str(tmp_path)]) == 130
    assert capsys.readouterr().err.strip() == "scratch-gpt generate: interrupted"

    def bug(ns):
        raise RuntimeError("index 7 is out of bounds")

    monkeypatch.setattr(commands, "cmd_generate", bug)
    with pytest.raises(RuntimeError, match="out of bounds"):
        scratch_gpt_cli.main(["generate", str(tmp_path)])
