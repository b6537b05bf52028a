"""One TwoNN estimate in a fresh process, for `twonn.py`: prints one JSON line with the seconds of
the estimate alone, the estimate, the process's resident memory before it and its peak during it.

Runs under the project's interpreter (method `project`, `skdim`) or under a virtualenv holding
DADApy (method `dadapy`, which pins numpy < 2), so it imports only what its method needs."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from resident_memory import reset_peak, status_bytes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", required=True, choices=("project", "dadapy", "skdim"))
    parser.add_argument("--data", required=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.method == "project":
        import torch

        from residual.spectral.intrinsic_dimension import two_nn

        points = torch.from_numpy(np.load(args.data)).to(args.device)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

        def estimate() -> float:
            value = two_nn(points, fraction=0.9).id
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            return value
    elif args.method == "dadapy":
        from dadapy import Data

        points = np.load(args.data).astype(np.float64)

        def estimate() -> float:
            return float(Data(points).compute_id_2NN(algorithm="base", mu_fraction=0.9)[0])
    else:
        import skdim

        points = np.load(args.data).astype(np.float64)

        def estimate() -> float:
            return float(skdim.id.TwoNN().fit(points).dimension_)

    reset_peak()
    baseline = status_bytes("VmRSS")
    start = time.perf_counter()
    value = estimate()
    seconds = time.perf_counter() - start
    peak = status_bytes("VmHWM")
    print(json.dumps({"method": args.method, "seconds": seconds, "id": value, "baseline_bytes": baseline, "peak_bytes": peak}))


if __name__ == "__main__":
    main()
