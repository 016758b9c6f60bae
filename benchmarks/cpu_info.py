"""The CPU a benchmark ran on, for its JSON: no ratio without the machine it was measured on."""

from __future__ import annotations

import os
import platform

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "avx_vnni")


def _proc_cpuinfo() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo (Linux), or an empty dict."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            block = fh.read().split("\n\n", 1)[0]
    except OSError:
        return {}
    fields = {}
    for line in block.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _physical_cores(info: dict[str, str]) -> int | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            pairs = set()
            physical = core = None
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    physical = value.strip()
                elif key == "core id":
                    core = value.strip()
                elif not line.strip() and core is not None:
                    pairs.add((physical, core))
                    physical = core = None
            if core is not None:
                pairs.add((physical, core))
        return len(pairs) or None
    except OSError:
        return None


def cpu_info() -> dict:
    """Model name, vendor, the SIMD/matrix flags that decide kernel speed, cores, CPUs usable, torch threads."""
    import torch

    info = _proc_cpuinfo()
    flags = set(info.get("flags", "").split())
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "model": info.get("model name") or platform.processor() or platform.machine(),
        "vendor": info.get("vendor_id", ""),
        "family_model_stepping": "/".join(info.get(k, "?") for k in ("cpu family", "model", "stepping")),
        "machine": platform.machine(),
        "flags": {flag: flag in flags for flag in FLAGS} if flags else {},
        "physical_cores": _physical_cores(info),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def kernel_choices() -> dict[str, str]:
    """The kernels scratch-gpt measured fastest in this process, one per key (scratch_gpt/kernel_choice.py)."""
    from scratch_gpt.kernel_choice import CHOOSER

    return {" ".join(str(part).replace("torch.", "") for part in key): name
            for key, name in sorted(CHOOSER.decisions.items(), key=str)}


if __name__ == "__main__":
    import json

    print(json.dumps(cpu_info(), indent=1))
