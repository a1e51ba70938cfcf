#!/usr/bin/env bash
# detaudit's GPU path, in one command, on a GPU machine that has JAX and PyTorch but no TensorFlow and no
# package index (the lent H200: Python 3.12, PyTorch 2.11 and JAX 0.11 for CUDA 13):
#
#     bash benchmarks/gpu_check.sh            # writes to $OUT (default: ./gpu-check)
#
# It installs detaudit from this checkout with Keras and the two small dependencies that machine lacks
# (namex, optree), from wheels in .whl/; runs the bundled gpu-backends config (JAX and PyTorch, determinism
# off/on, TF32 default/off, shapes from TensorFlow's cuDNN determinism tests) and the GPU harness line
# (benchmarks/gpu_harness.py: detaudit's per-pass cost against a plain loop); and writes the summary, the
# table, the run's meta.json and the harness figures to $OUT.
#
# Fetch the wheels once, beforehand, on a machine that reaches the index (3 MB; .whl/ is ignored by git,
# and the device tool's `carry: [".whl"]` brings it along):
#
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WHEELS=${WHEELS:-$REPO/.whl}
OUT=${OUT:-$REPO/gpu-check}
mkdir -p "$OUT"
SITE=$(mktemp -d)
RUNS=$(mktemp -d)
ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "no wheels in $WHEELS: fetch them first (see the top of this script)" >&2
                                       exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl || exit 2
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --target "$SITE" . \
  || exit 2
export PYTHONPATH="$SITE" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3 COLUMNS=160
cd "$RUNS"  # nothing of the checkout on the path: detaudit and Keras come from $SITE
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1
python3 -m detaudit --version >> "$OUT/gpu.txt" 2>&1
# Exit 1 is a finding (nondeterministic cells); only a crash of the command itself stops the check.
python3 -m detaudit run "$SITE/detaudit/configs/gpu-backends.yaml" --out "$RUNS" --run-id gpu-backends \
  > "$OUT/summary.txt" 2> "$OUT/run-stderr.txt"
echo "detaudit run: exit $?" >> "$OUT/summary.txt"
cp "$RUNS/gpu-backends/results.parquet" "$RUNS/gpu-backends/meta.json" "$OUT/" 2>/dev/null
python3 - "$RUNS/gpu-backends/results.parquet" "$OUT/table.csv" <<'PY' >> "$OUT/summary.txt" 2>> "$OUT/run-stderr.txt"
import sys

import pandas as pd

table = pd.read_parquet(sys.argv[1])
table.to_csv(sys.argv[2], index=False)
rows = table[(table["comparison"] == "repeat") & (table["status"] == "ok")]
print("nondeterministic tensors (repeat):")
print(rows[rows["n_repeats_differ"] > 0][["layer", "input_shape", "backend", "determinism", "tf32", "tensor",
                                          "n_repeats_differ", "n_mismatch", "max_ulp", "max_ulp_scaled"]]
      .to_string(index=False))
PY
python3 "$REPO/benchmarks/gpu_harness.py" > "$OUT/harness.jsonl" 2>> "$OUT/run-stderr.txt"
cat "$OUT/summary.txt" "$OUT/harness.jsonl"
