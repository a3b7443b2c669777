#!/usr/bin/env bash
# The checks that need the lent machine (16 CPU cores, one NVIDIA GPU), prepared to run there
# in one call from the repository's root: `bash benchmarks/device.sh` (about 6 minutes).
# Nothing can be fetched there, and nothing needs to be: its python3 has NumPy, Numba, Pillow,
# tqdm, matplotlib, threadpoolctl, PyTorch and CuPy, so cnnlab runs from the checkout. The
# output goes to $OUT/device.log as well (the folder whose files come back).
#  1. the device tests (what CuPy finds; `auto` still runs on the CPU) and the GPU tests (the
#     ops that take their array module from their inputs, on CuPy against NumPy, float64; a
#     whole model trained on CuPy against the same training on the CPU; ResNet-20's float64
#     loss curve against PyTorch's on the GPU; a GPU-trained model loaded on the CPU; a run
#     SIGKILLed and resumed on the GPU; the bfloat16 rounding of mixed precision);
#  2. #26's first figures: ResNet-20 on the GPU, cnnlab on CuPy against PyTorch eager and
#     torch.compile on CUDA (`compare.py --device gpu`, one round);
#  3. #25's core-count target: resnet20 training at 1, 2, 4, 8 and 16 threads against PyTorch
#     with the same thread count (`compare.py --threads-sweep`, one round: a fresh process per
#     figure), with training's shards in worker processes (the default since session 26) and
#     again on threads, to see which scales.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
log="${OUT:-/tmp}/device.log"
{
    echo "== machine"; nproc; nvidia-smi -L 2>&1; python3 --version
    python3 -c "import numpy, numba, torch; print('numpy', numpy.__version__, 'numba',
numba.__version__, 'torch', torch.__version__)"
    echo "== device tests"
    python3 -m pytest -q -rs -p no:cacheprovider tests/test_devices.py tests/test_gpu.py
    echo "== the GPU against PyTorch"
    python3 benchmarks/compare.py --device gpu --model resnet20 --rounds 1
    echo "== threads sweep"
    python3 benchmarks/compare.py --threads-sweep --model resnet20 --rounds 1
    echo "== threads sweep, shards on threads"
    CNNLAB_SHARDS=threads python3 benchmarks/compare.py --threads-sweep --model resnet20 --rounds 1
} 2>&1 | tee "$log"
