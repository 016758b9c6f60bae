"""What the running hardware computes natively: decides ``--mixed-precision auto`` and ``--dtype bf16``."""

from __future__ import annotations

_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bf16_units() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    import torch

    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(cpu, probe, None)
        if check is not None and check():
            return True
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in _BF16_CPU_FLAGS)


def auto_mixed_precision(device_type: str) -> tuple[str, str]:
    """``(mixed precision, why)`` for ``--mixed-precision auto`` on ``device_type``: bf16 where the device computes
    it natively (a CUDA GPU with bf16 support; a CPU with AVX512-BF16 or AMX), else ``no`` (fp32)."""
    import torch

    if device_type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "this GPU computes bf16 natively"
        return "no", "this GPU has no bf16 support"
    if device_type == "cpu":
        if cpu_has_bf16_units():
            return "bf16", "this CPU computes bf16 natively (AVX512-BF16 or AMX)"
        return "no", "this CPU has no bf16 units (AVX512-BF16 or AMX), so bf16 would be emulated and slower"
    return "no", f"no bf16 policy for {device_type} devices"


__all__ = ["auto_mixed_precision", "cpu_has_bf16_units"]
