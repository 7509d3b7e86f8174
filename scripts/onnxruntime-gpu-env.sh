# Sourced, not run: `. scripts/onnxruntime-gpu-env.sh PYTHON` sets up a `crat` process to run
# ONNX Runtime with CUDA from the onnxruntime-gpu package PYTHON imports. It exports
# ORT_DYLIB_PATH (the package's libonnxruntime), LD_LIBRARY_PATH (the CUDA and cuDNN wheels'
# folders first, see onnxruntime-gpu-libs.py beside this file) and CUDA_DEVICE_ORDER=PCI_BUS_ID
# (NVML's order, which the nodes' GPU probe uses). Returns non-zero, after the helper named
# what is missing, when PYTHON has no onnxruntime.
read -r ORT_DYLIB_PATH _crat_cuda_libs < <("$1" "$(dirname "${BASH_SOURCE[0]}")/onnxruntime-gpu-libs.py") ||
    return 1
export ORT_DYLIB_PATH
export LD_LIBRARY_PATH="${_crat_cuda_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CUDA_DEVICE_ORDER=PCI_BUS_ID
unset _crat_cuda_libs
