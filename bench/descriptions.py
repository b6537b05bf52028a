"""Descriptions: time per head of TextSpan and SOMP on the CPU, extrapolated to the paper's scale.

Synthetic heads shaped like ViT-L/14's in output space: rank d_head + 2 = 66 in d = 768 (a random
orthonormal basis, decreasing scales, a mean offset), and a dictionary of 3,500 random unit rows.
Per head, three steps are timed as the describe rule runs them:
- moments: the float64 streaming covariance and `eigh` of the PCA (`fit_pca`). On the train split
  the describe rule reads them from the pca rule's file instead, so this is paid only for another split;
- TextSpan given the moments (independent of the sample count);
- SOMP: the centred coordinates in the kept components, then k rounds (linear in the sample count).
Each step is timed (median of --reps; wall-clock and process CPU time) at two reduced sample
counts; the sample-dependent steps are extrapolated to --target-samples by the line through both
points (time = a + b n). Reading and decoding the unit file is not included (the pca rule pays
the same read).

    .venv/bin/python bench/descriptions.py --threads 1 --name descriptions_vit_l14
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import RESULTS, environment, report, set_threads, table

from residual.descriptions.somp import somp
from residual.descriptions.textspan import text_span
from residual.spectral.pca import fit_pca


def head_outputs(samples: int, width: int, rank: int, seed: int) -> torch.Tensor:
    """[n, width] float32 outputs of rank `rank` plus a mean offset, like one head in output space."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(width, rank, generator=generator, dtype=torch.float64))[0].T.float()
    scales = torch.logspace(0, -2, rank)
    weights = torch.randn(samples, rank, generator=generator) * scales
    return weights @ basis + torch.randn(width, generator=generator)


def timed(step, reps: int) -> dict[str, float]:
    """Median wall-clock and process CPU seconds of `step` over `reps` calls. On a shared machine
    the CPU time (all threads of this process) is the steadier figure; with one thread it is the
    wall-clock time the step takes on an idle core."""
    wall, cpu = [], []
    for _ in range(reps):
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"wall": statistics.median(wall), "cpu": statistics.median(cpu)}


def measure(samples: int, args: argparse.Namespace, dictionary: torch.Tensor) -> dict[str, dict[str, float]]:
    outputs = head_outputs(samples, args.width, args.head_dim + 2, args.seed)
    pca = fit_pca(outputs[:, None], ["head_0_0"])
    basis, mean = pca.components[0].double(), pca.means[0].double()
    total = float(pca.total_variance[0])
    return {
        "moments": timed(lambda: fit_pca(outputs[:, None], ["head_0_0"]), args.reps),
        "textspan": timed(lambda: text_span(pca, 0, dictionary, args.rank, args.k), args.reps),
        "somp": timed(lambda: somp((outputs.double() - mean) @ basis.T, basis, dictionary, total, args.k), args.reps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, nargs=2, default=[2500, 5000], help="the two reduced sample counts measured")
    parser.add_argument("--target-samples", type=int, default=50000)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--texts", type=int, default=3500)
    parser.add_argument("--heads", type=int, default=384, help="heads of the model (24 x 16 at ViT-L)")
    parser.add_argument("--rank", type=int, default=80)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--name", default="descriptions")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    dictionary = F.normalize(torch.randn(args.texts, args.width, generator=torch.Generator().manual_seed(args.seed + 1)), dim=-1)
    small, large = args.samples
    measured = {samples: measure(samples, args, dictionary) for samples in (small, large)}

    def extrapolate(step: str, clock: str) -> float:
        if step == "textspan":  # works on [rank, rank] moments: no sample dependence
            return measured[large][step][clock]
        slope = (measured[large][step][clock] - measured[small][step][clock]) / (large - small)
        return max(measured[large][step][clock] + slope * (args.target_samples - large), measured[large][step][clock])

    steps = ["moments", "textspan", "somp"]
    target = {clock: {step: extrapolate(step, clock) for step in steps} for clock in ("cpu", "wall")}
    rows = [
        [
            step,
            clock,
            measured[small][step][clock],
            measured[large][step][clock],
            target[clock][step],
            target[clock][step] * args.heads / 3600,
        ]
        for step in steps
        for clock in ("cpu", "wall")
    ]
    per_head = target["cpu"]["textspan"] + target["cpu"]["somp"]
    headers = [
        "step",
        "clock",
        f"n = {small}",
        f"n = {large}",
        f"n = {args.target_samples} (extrapolated)",
        f"hours for {args.heads} heads",
    ]
    text = "\n".join(
        [
            (
                f"Descriptions per head: d = {args.width}, rank {args.head_dim + 2} outputs, {args.texts} texts, k = {args.k}, "
                f"TextSpan rank {args.rank}; CPU, {threads} thread(s); seconds (median of {args.reps}); "
                f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
            ),
            "",
            table(rows, headers),
            "",
            (
                f"TIME textspan + somp per head at n = {args.target_samples} (CPU time): {per_head:.2f} s "
                f"({per_head * args.heads / 3600:.2f} h for {args.heads} heads; moments from the pca rule on the train split)"
            ),
            f"TIME with moments (another split): {per_head + target['cpu']['moments']:.2f} s per head",
        ]
    )
    record = {
        "environment": environment(torch.device("cpu"), threads),
        "arguments": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "measured": {str(samples): times for samples, times in measured.items()},
        "extrapolated": target,
        "per_head_cpu_s": per_head,
    }
    report(args.name, args.out_dir, text, record)


if __name__ == "__main__":
    main()
