"""Print one line naming the interpreter and the versions of the packages scratch-gpt depends on.

`.ci/setup` prints it after installing and `.ci/run` / `.ci/matrix` print it beside every test result, so a
failure names the versions it ran with. Usage: ``python .ci/versions.py LABEL``.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata

PACKAGES = ("torch", "transformers", "accelerate", "datasets", "tokenizers", "peft", "trl", "huggingface_hub",
            "lm_eval", "gguf", "gradio", "numpy")


def versions_line(label: str) -> str:
    """``[label] python X.Y.Z: torch a, transformers b, ...`` (``missing`` for a package not installed)."""
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} missing")
    return f"[{label}] python {platform.python_version()}: " + ", ".join(found)


if __name__ == "__main__":
    print(versions_line(sys.argv[1] if len(sys.argv) > 1 else "versions"))
