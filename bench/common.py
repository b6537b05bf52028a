"""Shared plumbing of the benchmarks: model specs from the CLI, the run's environment, the report files."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate

from residual.units.encode import library_versions

RESULTS = Path(__file__).resolve().parent / "results"


def add_model_arguments(parser: argparse.ArgumentParser, arch: str, library: str = "open_clip") -> None:
    """--library/--arch/--kwargs/--pretrained/--device/--threads/--name/--out-dir, shared by every benchmark."""
    parser.add_argument("--library", default=library, choices=("open_clip", "timm", "transformers"))
    parser.add_argument("--arch", default=arch, help="the library's architecture name")
    parser.add_argument("--kwargs", type=json.loads, default={}, help='JSON constructor kwargs, e.g. \'{"img_size": 224}\'')
    parser.add_argument("--pretrained", default=None, help="tag or checkpoint file; default random init (seed 0)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, auto, ...")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--name", default=None, help="report name: writes <out-dir>/<name>.txt and .json")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)


def model_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The `models:` config entry the CLI describes."""
    return {"library": args.library, "arch": args.arch, "pretrained": args.pretrained, "kwargs": args.kwargs}


def set_threads(threads: int | None) -> int:
    """Apply --threads (if given) and return the intra-op thread count in effect."""
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


@contextmanager
def busy_neighbours(count: int) -> Iterator[None]:
    """Run `count` processes that each keep one core busy, as the other jobs of a workflow run do,
    for a measurement of how a method holds up when it does not have the machine to itself."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so wall-clock timings cover the work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment(device: torch.device, threads: int) -> dict[str, Any]:
    """What a timing depends on: interpreter, libraries, device, threads and the machine's load now."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "command": shlex.join(_portable(word) for word in sys.orig_argv),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": library_versions(),
        "device": str(device),
        "device_name": name,
        "threads": threads,
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()),
    }


def _portable(word: str) -> str:
    """A command-line word with the checkout's own folder taken off paths inside it, so that a result
    file shows the command as run from the project root on any machine."""
    root = str(Path(__file__).resolve().parents[1]) + os.sep
    return word.removeprefix(root)


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one (Linux), else the machine type."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def headline(name: str, value: float, target: float) -> tuple[str, bool]:
    """`RATIO <name> = <value> (target <= X): PASS|FAIL` and whether it passed."""
    passed = value <= target
    return f"RATIO {name} = {value:.3f} (target <= {target:g}): {'PASS' if passed else 'FAIL'}", passed


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    return tabulate(rows, headers=headers, tablefmt="github", floatfmt=".4g")


def report(name: str, out_dir: Path, text: str, record: dict[str, Any]) -> None:
    """Print `text` and write it to <out_dir>/<name>.txt, `record` to <out_dir>/<name>.json."""
    print(text)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.txt").write_text(text + "\n")
    (out_dir / f"{name}.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
