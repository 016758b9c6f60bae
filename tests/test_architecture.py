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


# ------------------------------------------------------------------------------------------------------------
# size of functions, and the run-folder contract as the one place that names run files

SOURCE_AREAS = ("training", "hub_export", "benchmarks", "scratch_gpt")
MAX_FUNCTION_LINES = 60
MAX_MEDIAN_LINES = 15


def _sources() -> list[Path]:
    files = [ROOT / "scratch_gpt_cli.py"]
    for area in SOURCE_AREAS:
        files += sorted((ROOT / area).rglob("*.py"))
    return files


def function_lengths(path: Path) -> list[tuple[str, int, int]]:
    """(qualified-ish name, first line, number of lines) of every function and method in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        (node.name, node.lineno, node.end_lineno - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]


def _package(path: Path) -> str:
    """The package a file belongs to: its folder (sub-packages count on their own), or the CLI module."""
    return str(path.parent.relative_to(ROOT)) if path.parent != ROOT else path.stem


def test_no_function_over_60_lines():
    offenders = [
        f"{path.relative_to(ROOT)}:{line} {name}() is {length} lines"
        for path in _sources()
        for name, line, length in function_lengths(path)
        if length > MAX_FUNCTION_LINES
    ]
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(offenders)


def test_median_function_length_per_package():
    import statistics

    per_package: dict[str, list[int]] = {}
    for path in _sources():
        per_package.setdefault(_package(path), []).extend(n for _, _, n in function_lengths(path))
    medians = {pkg: statistics.median(lengths) for pkg, lengths in per_package.items() if lengths}
    offenders = [f"{pkg}: median {m} lines" for pkg, m in sorted(medians.items()) if m > MAX_MEDIAN_LINES]
    assert not offenders, f"packages whose median function is over {MAX_MEDIAN_LINES} lines:\n" + "\n".join(offenders)


def test_function_length_checker_counts_lines(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def a():\n    return 1\n\n\nclass C:\n    def b(self):\n        x = 1\n        return x\n")
    assert sorted((n, length) for n, _, length in function_lengths(src)) == [("a", 2), ("b", 3)]


def _run_file_names() -> set[str]:
    from scratch_gpt import run_folder

    current = {*run_folder.RECORD_FILES, run_folder.CHECKPOINTS_DIR, run_folder.COMPLETE_MARKER}
    retired = {"metrics.jsonl", "finetune_report.json", "test_answers.json", "loss_plot.png"}
    return current | retired


def run_file_literals(path: Path, names: set[str]) -> list[str]:
    """String literals (docstrings aside) that are, or end in ``/``, a run-folder file name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            path_like = not any(c.isspace() for c in node.value)
            if any(node.value == n or (path_like and node.value.endswith("/" + n)) for n in names):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    return found


def test_run_folder_names_appear_only_in_the_contract_module():
    names = _run_file_names()
    contract = ROOT / "scratch_gpt" / "run_folder.py"
    offenders = [hit for path in _sources() if path != contract for hit in run_file_literals(path, names)]
    assert not offenders, (
        "run-folder file names outside scratch_gpt/run_folder.py (use its constants and functions):\n"
        + "\n".join(offenders)
    )


def test_run_file_literal_checker_finds_names(tmp_path):
    src = ROOT / "tests" / "_probe_run_names.py"
    try:
        src.write_text('"""trainer_state.json in a docstring is fine."""\nA = "trainer_state.json"\nB = f"{A}/loss.png"\n')
        hits = run_file_literals(src, _run_file_names())
    finally:
        src.unlink()
    assert [h.rsplit(": ", 1)[1] for h in hits] == ["'trainer_state.json'", "'/loss.png'"]
