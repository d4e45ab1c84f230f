#!/usr/bin/env bash
# Device run (2-4 min on an H200): CUDA checks of the model code + the model unit tests that need
# no database. From the repo root: `bash benchmarks/gpu_check.sh`, carrying .whl (the wheels the
# machine lacks). Writes $OUT/gpu_check.json, gpu_check.log, pytest.log, nvidia-smi.txt.
set -u
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
ls .whl/*.whl >/dev/null 2>&1 || { echo "no .whl/*.whl: carry .whl"; exit 3; }
timeout 120 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || { echo "wheel install failed"; exit 3; }
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"

echo "== gpu_check.py (${SECONDS}s)"
timeout 320 python3 benchmarks/gpu_check.py --out "$OUT/gpu_check.json" ${GPU_CHECK_ARGS:-} 2>&1 \
  | tee "$OUT/gpu_check.log"
rc_check=${PIPESTATUS[0]}

# Model unit tests (CPU tensors; they check this machine's torch/numpy/timm), minus the three that
# need the MiniLM text encoder or SQLAlchemy (not carried), plus the one CUDA unit test.
echo "== pytest (${SECONDS}s)"
u=tests/unit
timeout 120 python3 -m pytest -q -p no:cacheprovider -rs --durations=5 \
  $u/test_litemedsam.py $u/test_selective.py $u/test_model_arch.py $u/test_model_checkpoint.py \
  $u/test_infer.py $u/test_geometry_resample.py::test_cuda_resampling_matches_cpu \
  --deselect $u/test_selective.py::test_fit_frozen_model_writes_a_loadable_folder \
  --deselect $u/test_infer.py::test_predictor_shapes_and_dtypes \
  --deselect $u/test_infer.py::test_one_loader_honours_threshold_and_text_encoder \
  2>&1 | tee "$OUT/pytest.log"
rc_test=${PIPESTATUS[0]}

echo "== done in ${SECONDS}s: gpu_check rc=$rc_check (0: no FAIL row), pytest rc=$rc_test"
[ "$rc_check" = 0 ] && [ "$rc_test" = 0 ]
