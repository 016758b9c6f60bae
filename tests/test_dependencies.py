"""The dependency policy stays true: the oldest-versions CI leg installs exactly the lower bounds we claim.

``.ci/constraints-oldest.txt`` pins every direct dependency of the package and of its test extras;
``pyproject.toml`` gives each a lower bound. If one moves without the other, CI would test versions we do not
claim (or claim versions we do not test). Upper bounds are allowed only with a reason in a comment.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENT = re.compile(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(.*)$")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _direct_requirements() -> dict[str, str]:
    """{name: specifier} for the runtime dependencies and the test extra (self-references expanded)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    found: dict[str, str] = {}
    pending = [*project["dependencies"], *extras["test"]]
    while pending:
        name, extra, spec = REQUIREMENT.match(pending.pop()).groups()
        if _normalise(name) == "scratch-gpt":
            for sub in (extra or "[]")[1:-1].split(","):
                pending.extend(extras[sub.strip()])
            continue
        found.setdefault(_normalise(name), spec.replace(" ", ""))
    return found


def _oldest_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / ".ci" / "constraints-oldest.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[_normalise(name)] = version
    return pins


def test_every_direct_dependency_has_a_lower_bound_pinned_in_the_oldest_leg():
    requirements, pins = _direct_requirements(), _oldest_pins()
    assert set(requirements) == set(pins), (set(requirements) ^ set(pins))
    for name, spec in requirements.items():
        lower = re.search(r">=([0-9][0-9a-z.]*)", spec)
        assert lower, f"{name} has no lower bound ({spec!r}): CI cannot test what it does not name"
        assert Version(lower.group(1)) == Version(pins[name]), f"{name}: pyproject says >={lower.group(1)}, the oldest leg pins {pins[name]}"


def test_upper_bounds_carry_a_reason():
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if re.search(r"['\"][A-Za-z0-9_.\[\]-]+[^'\"]*<[0-9]", line):
            assert "#" in line, f"an upper bound without a reason: {line.strip()}"


def test_requires_python_matches_the_matrix_and_the_readme():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lowest = re.fullmatch(r">=(3\.\d+)", project["requires-python"]).group(1)
    assert f"Python ≥ {lowest}" in (ROOT / "README.md").read_text()
    assert "requires-python" in (ROOT / ".ci" / "matrix").read_text()  # the oldest leg reads the bound itself
