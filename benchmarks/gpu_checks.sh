#!/usr/bin/env bash
# The GPU checks, as one prepared run on a borrowed CUDA machine (python3 holding torch + CUDA, no internet).
#
#   bash benchmarks/gpu_checks.sh [OUTDIR] [CONVERSION_STEPS]
#
# 1. installs sdmc without dependencies (and any wheels in .whl/, e.g. spikingjelly + loguru, which such
#    machines lack; fetch them with `pip download --no-deps --only-binary=:all: -d .whl spikingjelly loguru`);
# 2. tests/test_cuda.py: executor vs eager vs CPU on the GPU, gradients, every solver, CLI train + sample, bf16;
# 3. tests/test_triton_neuron.py: the fused Triton neuron == the torch kernel on the GPU (and under torch.compile
#    with CUDA graphs);
# 4. benchmarks/bench_torch_exec.py --device cuda: eager (spikingjelly's torch, native cuda and triton neuron
#    implementations) vs the compiled executor in fp32, and bf16; time and peak CUDA memory;
# 5. benchmarks/conversion_table.py --device cuda: the issue-9 digits-FID table (ANN, QANN, converted SNN
#    before/after fine-tuning, direct SNN), if that script exists.
# Every stage logs to OUTDIR and a failing stage does not stop the next one.
set -u
OUTDIR=${1:-${OUT:-gpu_out}}
CONV_STEPS=${2:-2000}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
PY=${PYTHON:-python3}
t0=$(date +%s)
stamp() { echo "=== [$(( $(date +%s) - t0 )) s] $*"; }

stamp "setup"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/sdmc-site .whl/*.whl && export PYTHONPATH=/tmp/sdmc-site
fi
$PY -m pip install -q --no-deps --no-build-isolation -e . >"$OUTDIR/install.log" 2>&1 || { cat "$OUTDIR/install.log"; exit 1; }
$PY -c "import torch, numpy, sdmc; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__, torch.cuda.get_device_name(0))"

stamp "tests/test_cuda.py"
$PY -m pytest tests/test_cuda.py -q -p no:cacheprovider -x 2>&1 | tee "$OUTDIR/test_cuda.log" | tail -25

stamp "tests/test_triton_neuron.py (GPU)"
$PY -m pytest tests/test_triton_neuron.py tests/test_neuron_module.py -q -p no:cacheprovider 2>&1 | tee "$OUTDIR/test_triton.log" | tail -5

stamp "bench_torch_exec --device cuda: fp32 vs spikingjelly torch/cuda/triton neurons"
$PY benchmarks/bench_torch_exec.py --device cuda --threads 8 --repeats 5 --batch 32 --cases fwd-T8,ddim10,train \
    --sj-impl torch,cuda,triton --json "$OUTDIR/bench_cuda.json" 2>&1 | tee "$OUTDIR/bench_cuda.log"
stamp "bench_torch_exec --device cuda: bf16"
$PY benchmarks/bench_torch_exec.py --device cuda --threads 8 --repeats 5 --batch 32 --cases fwd-T8,ddim10,train \
    --precision bf16 --sj-impl auto --json "$OUTDIR/bench_cuda_bf16.json" 2>&1 | tee "$OUTDIR/bench_cuda_bf16.log"

if [ -f benchmarks/conversion_table.py ]; then
  stamp "conversion_table --device cuda --steps $CONV_STEPS"
  $PY benchmarks/conversion_table.py --device cuda --steps "$CONV_STEPS" --out "$OUTDIR/conversion.json" 2>&1 \
      | tee "$OUTDIR/conversion.log" | tail -40
fi
stamp "done"
