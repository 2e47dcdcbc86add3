"""What a bench ran on, printed beside its figures: the CPU model, the count of CPUs, the
vector instructions the model's kernels use, and the load average (how busy the shared
cores were; a figure is read as a ratio against a limit measured in the same run)."""

import os
from pathlib import Path

FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")


def describe() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    lines = text.splitlines()
    flags = set(next((line.split(":", 1)[1].split() for line in lines
                      if line.startswith("flags")), []))
    name = next((line.split(":", 1)[1].strip() for line in lines
                 if line.startswith("model name")), "unknown CPU")
    have = " ".join(f for f in FEATURES if f in flags) or "none of " + " ".join(FEATURES)
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"{name}; {os.cpu_count()} CPUs; flags {have}; load average {load}"
