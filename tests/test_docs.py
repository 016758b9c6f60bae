"""The README and docs/ stay true: every `scratch-gpt` command they show parses with today's CLI.

Each command line in a fenced ``bash`` block of README.md or docs/*.md is split like a shell would (continuation
lines joined, ``&&`` / ``;`` / ``|`` separated, ``VAR=value`` prefixes and comments dropped) and parsed by the
CLI's own parser, so a renamed flag, a removed choice or a missing positional argument in the docs fails here.
Lines marked ``# not run`` are descriptions, not commands, and are skipped.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

import scratch_gpt_cli

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```bash\s*\n(.*?)^```", re.S | re.M)


def _commands(text: str) -> list[str]:
    """The `scratch-gpt ...` invocations in the bash blocks of a markdown text."""
    found = []
    for block in FENCE.findall(text):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            if "# not run" in line:
                continue
            line = re.sub(r"(^|\s)#.*$", "", line)
            for part in re.split(r"&&|;|\|", line):
                words = re.sub(r"\d?[<>]+\s*\S+", "", part).split()  # drop redirections
                while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
                    words.pop(0)
                if words and words[0] == "scratch-gpt":
                    found.append(" ".join(words[1:]))
    return found


def _all_commands() -> list[tuple[str, str]]:
    return [(path.name, cmd) for path in DOC_FILES for cmd in _commands(path.read_text())]


def test_readme_is_a_front_door() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move reference text to docs/"
    for path in DOC_FILES[1:]:
        assert f"docs/{path.name}" in "\n".join(lines) or path.name in "\n".join(lines), f"README never links {path.name}"


def test_docs_show_commands() -> None:
    assert len(_all_commands()) >= 20  # the extraction works: the docs are full of commands


@pytest.mark.parametrize(("doc", "command"), _all_commands())
def test_documented_command_parses(doc: str, command: str) -> None:
    parser = scratch_gpt_cli.build_parser()
    try:
        args = parser.parse_args(shlex.split(command))
    except SystemExit as exc:  # argparse reports the bad flag on stderr and exits 2
        pytest.fail(f"{doc}: `scratch-gpt {command}` no longer parses (exit {exc.code})")
    assert getattr(args, "func", None) is not None, f"{doc}: `scratch-gpt {command}` names no command"


def test_no_machine_paths_in_repo() -> None:
    out = subprocess.run(
        ["git", "grep", "-nE", r"(^|[^.\w])/(work|root)/|(^|[\s\"'`(])/tmp/", "--", ".", ":!tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.stdout == "", f"absolute machine paths outside tests/:\n{out.stdout}"
