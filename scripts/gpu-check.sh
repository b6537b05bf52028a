#!/usr/bin/env bash
# The first thing to run on a machine with a GPU: every CUDA path of the project, in <= 8 minutes.
#   scripts/gpu-check.sh [--dry-run] [--skip-demo] [--out-dir DIR] [--cores N]
#
#   1. the tests that CUDA skips elsewhere (files marked "needs CUDA"); a skip here is a failure
#   2. the extraction, PCA, TwoNN and training benchmarks with `--device cuda`, at sizes that
#      take a minute or two together; reports: DIR/<name>_cuda.{txt,json}
#   3. the demo (configs/demo.yaml) with every `device:` set to cuda, in a fresh folder; its charts,
#      tables and per-job benchmarks are copied to DIR/gpu-check/
# DIR defaults to bench/results. Stops at the first failure with the step and its log; exits 3 at
# once where CUDA is absent. PYTHON (default .venv/bin/python) runs everything, with this
# checkout's src/ first on the path.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
OUT="$ROOT/bench/results"
CORES="$(nproc)"
DRY_RUN=0
DEMO=1
BUDGET_S=480 # the check's whole time: each step gets what the earlier ones left

usage() { sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while (($#)); do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --skip-demo) DEMO=0 ;;
        --out-dir)
            [[ $# -ge 2 && -n "$2" ]] || { echo "gpu-check: --out-dir needs a folder" >&2; exit 2; }
            OUT="$(mkdir -p "$2" && cd "$2" && pwd)"
            shift
            ;;
        --cores)
            [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || { echo "gpu-check: --cores needs a positive integer" >&2; exit 2; }
            CORES="$2"
            shift
            ;;
        -h | --help) usage; exit 0 ;;
        *) echo "gpu-check: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"
START=$SECONDS
LOGS="$OUT/gpu-check/logs"

# One step: its name, then the command. Output goes to its log; on failure the log's tail is shown.
step() {
    local name="$1"
    shift
    local left=$((BUDGET_S - (SECONDS - START)))
    if ((DRY_RUN)); then
        printf '%-22s %s\n' "$name" "$*"
        return
    fi
    if ((left <= 0)); then
        echo "gpu-check: FAIL: the ${BUDGET_S} s budget is spent before '$name'" >&2
        exit 1
    fi
    printf '%-22s ' "$name"
    local began=$SECONDS
    if timeout "$left" "$@" >"$LOGS/$name.log" 2>&1; then
        echo "ok ($((SECONDS - began)) s)"
    else
        local status=$?
        echo "FAIL (exit $status after $((SECONDS - began)) s; 124: out of the time budget)"
        tail -n 30 "$LOGS/$name.log" >&2
        echo "gpu-check: the whole log: $LOGS/$name.log" >&2
        exit 1
    fi
}

if ((!DRY_RUN)); then
    if [[ ! -x "$PYTHON" ]]; then
        echo "gpu-check: no Python at $PYTHON: run make setup, or set PYTHON" >&2
        exit 2
    fi
    # Fail fast: nothing below means anything without a CUDA device torch can use.
    if ! "$PYTHON" - <<'EOF'; then
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees no CUDA device")
print(f"CUDA device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF
        echo "gpu-check: FAIL: no CUDA here; run this on a machine with an NVIDIA GPU and a CUDA build of torch" >&2
        exit 3
    fi
    mkdir -p "$LOGS"
fi

# 1. Tests that skip without CUDA: the files that say so, with skips reported, and none allowed.
mapfile -t CUDA_TESTS < <(grep -l "needs CUDA" tests/test_*.py)
# shellcheck disable=SC2016 # the inner script expands its own arguments
step cuda-tests bash -c 'out="$1"; shift; "$0" -m pytest -q -rs "$@" >"$out" 2>&1; status=$?; cat "$out"
    if grep -q "SKIPPED.*needs CUDA" "$out"; then echo "a CUDA test was skipped" >&2; exit 1; fi; exit $status' \
    "$PYTHON" "$LOGS/cuda-tests.out" "${CUDA_TESTS[@]}"

# 2. Benchmarks on the GPU, sizes chosen to fit the budget (the README's GPU sizes take longer).
BENCH=(--device cuda --out-dir "$OUT")
step bench-extraction "$PYTHON" bench/extraction_overhead.py --arch ViT-B-32 --batch 64 --reps 5 --name extraction_overhead_clip_b32_cuda "${BENCH[@]}"
step bench-pca "$PYTHON" bench/pca_units.py --synthetic ViT-B-32 --samples 2000 --methods new previous --reps 2 --name pca_units_clip_b32_cuda "${BENCH[@]}"
step bench-twonn "$PYTHON" bench/twonn.py --methods project --samples 5000 20000 --reps 2 --reps-largest 2 --name twonn_cuda "${BENCH[@]}"
step bench-training "$PYTHON" bench/training.py --arch ViT-B-32 --samples 800 --reps 2 --name training_clip_b32_cuda "${BENCH[@]}"

# 3. The demo on the GPU: its config with every device set to cuda (auto would fall back to the CPU).
if ((DEMO)); then
    RUN="$OUT/gpu-check/demo"
    if ((!DRY_RUN)); then
        rm -rf "$RUN"
        mkdir -p "$RUN"
        "$PYTHON" - "$ROOT/configs/demo.yaml" "$RUN/demo-cuda.yaml" <<'EOF'
import sys
import yaml

def on_cuda(node):
    if isinstance(node, dict):
        return {key: "cuda" if key == "device" else on_cuda(value) for key, value in node.items()}
    return [on_cuda(value) for value in node] if isinstance(node, list) else node

with open(sys.argv[1]) as source, open(sys.argv[2], "w") as target:
    yaml.safe_dump(on_cuda(yaml.safe_load(source)), target, sort_keys=False)
EOF
    fi
    step demo "$PYTHON" -m snakemake -s "$ROOT/Snakefile" --directory "$RUN" --configfile "$RUN/demo-cuda.yaml" --cores "$CORES" report_files
    if ((!DRY_RUN)); then
        mkdir -p "$OUT/gpu-check/charts" "$OUT/gpu-check/tables"
        cp -r "$RUN/results/charts/." "$OUT/gpu-check/charts/"
        cp -r "$RUN/results/tables/." "$OUT/gpu-check/tables/"
        cp -r "$RUN/benchmarks" "$OUT/gpu-check/job-benchmarks"
    fi
fi

((DRY_RUN)) || echo "gpu-check: PASS in $((SECONDS - START)) s; reports in $OUT, the demo's charts in $OUT/gpu-check/charts"
