"""Download by repo id from the Hub cache (offline) and upload to a loopback fake Hub; CLI wiring."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from hub_export.push import PushError, push_folder, resolve_token, validate_repo_id

from .conftest import REPO_ROOT, TOKEN, base_env, run_python
from .fake_hub import FakeHub

REV = "0123456789abcdef0123456789abcdef01234567"

_LOAD_BY_ID = r'''
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "scratch_gpt":
            raise ModuleNotFoundError("blocked", name=name)
sys.meta_path.insert(0, Block())
import torch
from transformers import AutoModelForCausalLM, pipeline
from hub_export.push import pull_model
ids = torch.tensor(json.loads(sys.argv[1]))
model = AutoModelForCausalLM.from_pretrained("owner/tiny-gpt", trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(ids).logits
gen = pipeline("text-generation", model="owner/tiny-gpt", trust_remote_code=True)
text = gen("Every effort moves you", max_new_tokens=5, do_sample=False)[0]["generated_text"]
print(json.dumps({"cls": type(model).__module__, "logits": logits.tolist(), "text": text,
                  "snapshot": str(pull_model("owner/tiny-gpt")),
                  "scratch_gpt_loaded": any(m.startswith("scratch_gpt") for m in sys.modules)}))
'''


def test_load_by_repo_id_from_hub_cache_offline(lm_export, run_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    cache = tmp_path / "hub"
    repo = cache / "models--owner--tiny-gpt"
    shutil.copytree(lm_export.out_dir, repo / "snapshots" / REV)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)

    ids = [[5, 17, 42, 99, 7, 3, 250, 11]]
    env = base_env(tmp_path)
    env.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    proc = run_python(_LOAD_BY_ID, json.dumps(ids), env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["cls"].startswith("transformers_modules.") and not report["scratch_gpt_loaded"]
    assert report["snapshot"] == str(repo / "snapshots" / REV)
    assert report["text"].startswith("Every effort moves you")

    source = AutoModelForCausalLM.from_pretrained(run_dir).eval()
    with torch.no_grad():
        expected = source(torch.tensor(ids)).logits
    assert torch.equal(torch.tensor(report["logits"]), expected)


def test_push_to_fake_hub_every_file_identical(lm_export, tmp_path):
    folder = tmp_path / "upload"
    shutil.copytree(lm_export.out_dir, folder)
    big = os.urandom(10 * 1024 * 1024 + 12345)  # above the Hub's 10 MB LFS threshold
    (folder / "extra").mkdir()
    (folder / "extra" / "big.bin").write_bytes(big)
    local = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    with FakeHub(TOKEN, max_seconds=120) as hub:
        env = base_env(tmp_path)
        env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_TOKEN=TOKEN)
        code = "import sys, scratch_gpt_cli; sys.exit(scratch_gpt_cli.main(sys.argv[1:]))"
        # token from HF_TOKEN, debug logging on: the token must still not show up
        p1 = run_python(code, "-v", "push", str(folder), "owner/tiny-gpt", "--private",
                        env=env, cwd=REPO_ROOT, timeout=120)
        assert p1.returncode == 0, p1.stderr[-3000:]
        # token from --token, to a new branch with a commit message
        env.pop("HF_TOKEN")
        p2 = run_python(code, "push", str(folder), "owner/tiny-gpt", "--token", TOKEN, "--revision", "dev",
                        "--commit-message", "second upload", env=env, cwd=REPO_ROOT, timeout=120)
        assert p2.returncode == 0, p2.stderr[-3000:]

    assert hub.repos["owner/tiny-gpt"]["private"] is True
    for branch in ("main", "dev"):
        remote = hub.files("owner/tiny-gpt", branch)
        assert remote.keys() == local.keys()
        for path, data in local.items():
            assert remote[path] == data, path
    assert "extra/big.bin" in hub.lfs_paths
    assert any(p.endswith(".safetensors") for p in hub.lfs_paths)
    assert "config.json" not in hub.lfs_paths  # small text files go inline
    assert [c["summary"] for c in hub.commits][-1] == "second upload"
    assert hub.authorized_requests > 0  # the token was sent ...
    for p in (p1, p2):  # ... and never shown
        assert TOKEN not in p.stdout and TOKEN not in p.stderr
    for path in tmp_path.rglob("*"):  # nor written anywhere (HF_HOME, the folder, caches)
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    for files in (hub.files("owner/tiny-gpt", b) for b in ("main", "dev")):
        assert not any(TOKEN.encode() in data for data in files.values())
    assert 'AutoModelForCausalLM.from_pretrained("owner/tiny-gpt", trust_remote_code=True)' in p1.stdout


_PUSH_ERRORS = r'''
import json, sys
from hub_export.push import PushError, push_folder
folder, token, url, dead_url = sys.argv[1:5]
cases = {"bad_token": (folder, "owner/x", "hf_wrong_token_abc", url),
         "forbidden": (folder, "someone-else/x", token, url),
         "unreachable": (folder, "owner/x", token, dead_url)}
out = {}
for name, (f, repo, tok, endpoint) in cases.items():
    try:
        push_folder(f, repo, token=tok, endpoint=endpoint)
        out[name] = "no error"
    except PushError as err:
        out[name] = str(err)
print(json.dumps(out))
'''


def test_push_errors_are_clear(lm_export, tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{s.getsockname()[1]}"
    with FakeHub(TOKEN, max_seconds=60, forbidden_namespaces=("someone-else",)) as hub:
        env = base_env(tmp_path)
        env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1")
        proc = run_python(_PUSH_ERRORS, str(lm_export.out_dir), TOKEN, hub.url, dead_url, env=env, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    messages = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "authentication failed" in messages["bad_token"] and "401" in messages["bad_token"]
    assert "permission denied" in messages["forbidden"] and "someone-else/x" in messages["forbidden"]
    assert "cannot reach" in messages["unreachable"]
    assert "hf_wrong_token_abc" not in proc.stdout + proc.stderr and TOKEN not in proc.stdout + proc.stderr
    assert "someone-else/x" not in hub.repos


def test_bad_repo_id_and_folder(lm_export, tmp_path):
    for bad in ("a/b/c", "bad name!", "owner/--x", "owner/a..b", ""):
        with pytest.raises(ValueError, match="invalid repo id"):
            validate_repo_id(bad)
    validate_repo_id("owner/good-name_1.0")
    with pytest.raises(ValueError, match="invalid repo id"):
        push_folder(lm_export.out_dir, "a/b/c", token=TOKEN)
    with pytest.raises(ValueError, match="does not look like an export"):
        push_folder(tmp_path, "owner/x", token=TOKEN)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        push_folder(tmp_path / "missing", "owner/x", token=TOKEN)


def test_token_sources(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(ValueError, match="HF_TOKEN.*hf auth login"):
        resolve_token(None)
    (tmp_path / "token").write_text("hf_saved_login\n")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    assert resolve_token(None) == "hf_saved_login"
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert resolve_token(None) == "hf_from_env"
    assert resolve_token("hf_option") == "hf_option"


def test_cli_options_have_help_and_errors_are_one_line(tmp_path, capsys):
    import scratch_gpt_cli

    parser = scratch_gpt_cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("export", "push"):
        for action in sub.choices[name]._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.dest} has no help"
    assert scratch_gpt_cli.main(["export", str(tmp_path / "missing"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err
    assert scratch_gpt_cli.main(["push", str(tmp_path), "not/a/valid/id", "--token", TOKEN]) == 1
    err = capsys.readouterr().err
    assert "invalid repo id" in err and TOKEN not in err


def test_debug_logging_of_a_push_shows_no_http_headers(lm_export, tmp_path, caplog, monkeypatch):
    """Under -v (root logger at DEBUG) the upload logs our progress, never request/response headers or the token."""
    import logging

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("httpx", "httpx2", "httpcore", "httpcore2", "huggingface_hub"):  # as a fresh process has them
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
    caplog.set_level(logging.DEBUG)
    with FakeHub(TOKEN, max_seconds=60) as hub:
        url = push_folder(lm_export.out_dir, "owner/logged", token=TOKEN, endpoint=hub.url)
    assert "owner/logged" in hub.repos and url
    messages = [r.getMessage() for r in caplog.records]
    assert any("uploading" in m for m in messages)  # our own debug/info logging is on
    http = [r.name for r in caplog.records if r.name.split(".")[0] in ("httpx", "httpx2", "httpcore", "httpcore2")]
    assert not http, f"HTTP client records under -v: {sorted(set(http))}"
    for m in messages:
        assert TOKEN not in m and "authorization" not in m.lower() and "headers" not in m.lower(), m


@pytest.mark.parametrize("raised", [
    RuntimeError(f"unexpected failure with {TOKEN} inside"),
    ValueError(f"invalid README metadata for token {TOKEN}"),  # was dead code after `except Exception`
    KeyError(TOKEN),
])
def test_every_push_failure_is_scrubbed(lm_export, monkeypatch, raised):
    import hub_export.push

    def failing(*args, **kwargs):
        raise raised

    monkeypatch.setattr(hub_export.push, "_upload", failing)
    with pytest.raises(PushError) as info:
        push_folder(lm_export.out_dir, "owner/x", token=TOKEN)
    assert TOKEN not in str(info.value) and "***" in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is not None  # the traceback shows no token text


def test_unreadable_file_in_push_is_named(lm_export, monkeypatch):
    import hub_export.push

    def failing(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(lm_export.out_dir / "model.safetensors"))

    monkeypatch.setattr(hub_export.push, "_upload", failing)
    with pytest.raises(PushError, match="cannot read .*model.safetensors .*permissions"):
        push_folder(lm_export.out_dir, "owner/x", token=TOKEN)
    real_access = os.access
    monkeypatch.setattr(hub_export.push.os, "access", lambda p, mode: "README" not in str(p) and real_access(p, mode))
    with pytest.raises(PermissionError, match=r"cannot read .*README.md: permission denied; .*chmod"):
        push_folder(lm_export.out_dir, "owner/x", token=TOKEN)


def test_export_and_push_options_parse_into_their_dataclasses():
    import scratch_gpt_cli
    from hub_export.card import CardOptions
    from hub_export.commands import ExportOptions, PushOptions, _from_namespace

    parser = scratch_gpt_cli.build_parser()
    args = parser.parse_args(["export", "m", "o", "--dataset", "a/b", "--dataset", "c/d", "--tag", "x",
                              "--card-dataset", "notes (internal)", "--format", "gpt2", "--overwrite",
                              "--max-shard-size", "1GB", "--repo-id", "me/m"])
    assert (args.model, args.out_dir) == ("m", "o")
    assert _from_namespace(CardOptions, args) == CardOptions(datasets=["a/b", "c/d"], tags=["x"], repo_id="me/m",
                                                             dataset_text="notes (internal)")
    assert _from_namespace(ExportOptions, args) == ExportOptions(export_format="gpt2", max_shard_size="1GB",
                                                                 overwrite=True)
    args = parser.parse_args(["push", "o", "me/m", "--private", "--revision", "dev", "--commit-message", "c"])
    assert _from_namespace(PushOptions, args) == PushOptions(private=True, revision="dev", commit_message="c")
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "m", "o", "--format", "tflite"])
