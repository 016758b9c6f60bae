"""Import rules, read from the source: the model package ships to the Hub as remote code."""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED_IN_MODEL = {"torch", "transformers"}


def _imports(path: Path):
    """(top-level module or None for relative, level, names, line) for every import in a file."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], 0, [alias.name], node.lineno
        elif isinstance(node, ast.ImportFrom):
            top = node.module.split(".")[0] if node.module else None
            yield top, node.level, [a.name for a in node.names], node.lineno


def _files(package: str):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources found in {package}/"
    return files


def test_model_package_imports_only_stdlib_torch_transformers_and_siblings():
    problems = []
    for path in sorted((ROOT / "scratch_gpt").glob("*.py")):
        for top, level, names, line in _imports(path):
            where = f"{path.name}:{line}"
            if level > 1:
                problems.append(f"{where}: relative import above the package")
            elif level == 1 and top is None:
                problems.append(f"{where}: `from . import {names}` (transformers copies only `from .x import y`)")
            elif level == 1 and not (ROOT / "scratch_gpt" / f"{top}.py").exists():
                problems.append(f"{where}: sibling module {top} does not exist")
            elif level == 0 and top not in ALLOWED_IN_MODEL and top not in sys.stdlib_module_names:
                problems.append(f"{where}: imports {top}")
            elif level == 0 and top == "scratch_gpt":
                problems.append(f"{where}: absolute self-import (use `from .x import y`)")
    assert not problems, "\n".join(problems)


# Shared by `training` and `hub_export` (the run-folder contract, all-or-nothing outputs), never by the model.
SHARED_STDLIB_MODULES = ("run_folder", "safe_output")


def _model_code() -> set[str]:
    """The sibling modules the model classes need (what an export ships as remote code): everything
    configuration_scratch_gpt and modeling_scratch_gpt import, transitively."""
    todo, seen = ["configuration_scratch_gpt", "modeling_scratch_gpt"], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for top, level, _, _ in _imports(ROOT / "scratch_gpt" / f"{name}.py"):
            if level == 1 and top is not None:
                todo.append(top)
    return seen


@pytest.mark.parametrize("module", SHARED_STDLIB_MODULES)
def test_shared_foundations_are_stdlib_only_and_not_model_code(module):
    path = ROOT / "scratch_gpt" / f"{module}.py"
    foreign = [
        f"{path.name}:{line}: {top or names}"
        for top, level, names, line in _imports(path)
        if level > 0 or top not in sys.stdlib_module_names
    ]
    assert not foreign, f"{module} must import only the standard library: {foreign}"
    model_code = _model_code()
    assert "modeling_scratch_gpt" in model_code and "attention" in model_code  # the walk follows imports
    assert module not in model_code, f"the model classes import {module}; the exported remote code must not need it"


def test_training_is_split_into_stage_packages():
    stages = {p.parent.name for p in (ROOT / "training").glob("*/__init__.py")}
    assert {"data", "pretrain", "generate", "finetune"} <= stages
    flat = [p.name for p in (ROOT / "training").glob("*.py") if p.name != "__init__.py"]
    assert not flat, f"training/ holds modules outside a stage package: {flat}"


@pytest.mark.parametrize("package, forbidden", [("training", "hub_export"), ("hub_export", "training")])
def test_stages_never_import_each_other(package, forbidden):
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in _files(package)
        for top, level, _, line in _imports(path)
        if level == 0 and top in (forbidden, "scratch_gpt_cli")
    ]
    assert not offenders, f"{package} imports {forbidden}: {offenders}"


def test_checker_catches_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import numpy\nfrom . import attention\nfrom training import data\n")
    found = [(top, level) for top, level, _, _ in _imports(bad)]
    assert ("numpy", 0) in found and (None, 1) in found and ("training", 0) in found
