"""Ship the ``scratch_gpt`` modeling files as remote code: which files, what they may import, the ``auto_map``.

transformers copies, for ``trust_remote_code=True``, the module an ``auto_map`` entry names plus every sibling it
imports as ``from .x import y``. So the export copies exactly that closure from the installed package, refuses
code that would not load on a machine without our package (imports other than the standard library, torch and
transformers; ``from . import x``; nested packages), and writes the ``auto_map`` into the exported model config.
"""

from __future__ import annotations

import ast
import inspect
import json
import logging
import re
import shutil
import sys
from pathlib import Path

from scratch_gpt.run_folder import CONFIG_FILE

logger = logging.getLogger(__name__)

# Auto classes listed in the remote-code auto_map, with the scratch_gpt class each resolves to.
AUTO_CLASSES = ("AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification")
# Top-level packages shipped remote code may import (besides the standard library).
ALLOWED_REMOTE_IMPORTS = {"torch", "transformers"}


def _relative_imports(path: Path) -> list[str]:
    """Sibling modules imported as ``from .x import y`` / ``import .x`` (what transformers copies)."""
    text = path.read_text(encoding="utf-8")
    found = re.findall(r"^\s*from\s+\.(\S+)\s+import", text, flags=re.MULTILINE)
    found += re.findall(r"^\s*import\s+\.(\S+)\s*$", text, flags=re.MULTILINE)
    return sorted(set(found))


def _imported_top_names(node: ast.AST) -> list[str]:
    """The top-level package names an absolute import statement brings in."""
    if isinstance(node, ast.Import):
        return [a.name.split(".")[0] for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module.split(".")[0]]
    return []


def _check_remote_file(path: Path) -> None:
    """Refuse shipped code that would not load on a machine without our package."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    allowed = ALLOWED_REMOTE_IMPORTS | set(getattr(sys, "stdlib_module_names", ())) | {"__future__"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0 and not node.module:
            raise ValueError(
                f"{path.name} uses `from . import ...`, which transformers does not ship as remote code; "
                "import siblings as `from .module import name`"
            )
        for name in _imported_top_names(node):
            if name not in allowed:
                raise ValueError(
                    f"{path.name} imports {name!r}; remote code may import only the standard library, torch, "
                    "transformers and its siblings"
                )


def remote_code_files(*classes: type) -> list[Path]:
    """The source files defining ``classes`` plus, recursively, every sibling they import relatively."""
    todo = [Path(inspect.getfile(c)) for c in classes]
    seen: list[Path] = []
    while todo:
        path = todo.pop(0)
        if path in seen:
            continue
        if not path.is_file():
            raise FileNotFoundError(f"remote code file {path} is missing; reinstall the project (pip install -e .)")
        seen.append(path)
        for module in _relative_imports(path):
            if "." in module:
                raise ValueError(f"{path.name} imports .{module}; remote code must be a flat folder of modules")
            todo.append(path.parent / f"{module}.py")
    return seen


def _registered_class(auto_name: str, config_class: type) -> type:
    """The scratch_gpt class transformers' registry maps ``config_class`` to for one Auto class."""
    import scratch_gpt
    import transformers

    try:
        return getattr(transformers, auto_name)._model_mapping[config_class]
    except (KeyError, AttributeError):  # registry layout changed: fall back to the package's public names
        suffix = {"AutoModel": "Model"}.get(auto_name, auto_name.replace("AutoModel", ""))
        cls = getattr(scratch_gpt, f"ScratchGPT{suffix}", None)
    if cls is None:
        raise ValueError(f"scratch_gpt registers no class for {auto_name}")
    return cls


def auto_classes(config_class: type) -> dict[str, type]:
    """The scratch_gpt class registered for each Auto class (read from transformers' registry)."""
    found: dict[str, type] = {"AutoConfig": config_class}
    for auto_name in AUTO_CLASSES[1:]:
        found[auto_name] = _registered_class(auto_name, config_class)
    return found


def write_remote_code(folder: Path, config_class: type) -> list[str]:
    """Copy the modeling files into ``folder`` and add ``auto_map`` to its config; returns the file names."""
    classes = auto_classes(config_class)
    files = remote_code_files(*classes.values())
    package_dir = files[0].parent
    for path in files:
        if path.parent != package_dir:
            raise ValueError(f"remote code must come from one folder; {path} is outside {package_dir}")
        _check_remote_file(path)
        shutil.copy2(path, folder / path.name)
    config_file = folder / CONFIG_FILE
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["auto_map"] = {name: f"{Path(inspect.getfile(c)).stem}.{c.__name__}" for name, c in classes.items()}
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("remote code: %s", ", ".join(p.name for p in files))
    return [p.name for p in files]
