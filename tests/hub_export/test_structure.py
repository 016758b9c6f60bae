"""Shape rules for hub_export, read from the source: short functions, run-folder names only via the contract."""

from __future__ import annotations

import ast
import statistics

import pytest

from scratch_gpt import run_folder

from .conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "hub_export"
# The export stage's own modules (the GGUF / serve / playground modules name their own outputs).
EXPORT_MODULES = ("card.py", "commands.py", "export.py", "push.py", "remote_code.py", "verify.py")
# Records of how a model was made, plus the names the card used to guess among before the contract existed.
RECORD_NAMES = (*run_folder.RECORD_FILES, "metrics.jsonl", "loss_plot.png", "run_config.json", "train_args.json")
MODEL_NAMES = (
    run_folder.CONFIG_FILE, run_folder.GENERATION_CONFIG_FILE, run_folder.MODEL_CARD_FILE,
    *run_folder.WEIGHTS_FILES, *run_folder.TOKENIZER_FILES,
)


def _functions(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_functions_are_short():
    lengths, long = [], []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in _functions(path):
            length = node.end_lineno - node.lineno + 1
            lengths.append(length)
            if length > 60:
                long.append(f"{path.name}:{node.lineno} {node.name} ({length} lines)")
    assert not long, f"functions over 60 lines: {long}"
    assert statistics.median(lengths) <= 15, statistics.median(lengths)


def test_export_orchestrator_is_short():
    from hub_export import export

    node = next(n for n in _functions(PACKAGE / "export.py") if n.name == export.export_model.__name__)
    assert node.end_lineno - node.lineno + 1 <= 40


@pytest.mark.parametrize("module", [p.name for p in sorted(PACKAGE.glob("*.py"))])
def test_run_records_are_named_only_by_the_contract(module):
    text = (PACKAGE / module).read_text(encoding="utf-8")
    found = [name for name in RECORD_NAMES if name in text]
    assert not found, f"{module} names run-folder files {found}; use scratch_gpt.run_folder's constants"


@pytest.mark.parametrize("module", EXPORT_MODULES)
def test_export_modules_name_model_files_only_by_the_contract(module):
    text = (PACKAGE / module).read_text(encoding="utf-8")
    found = [name for name in MODEL_NAMES if name in text]
    assert not found, f"{module} names model-folder files {found}; use scratch_gpt.run_folder's constants"


def test_the_check_catches_a_literal(tmp_path):
    assert any(name in 'plot = run_dir / "loss.png"' for name in RECORD_NAMES)
    assert any(name in 'open(folder / "config.json")' for name in MODEL_NAMES)
