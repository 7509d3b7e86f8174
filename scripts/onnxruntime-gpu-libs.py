"""Where the onnxruntime(-gpu) Python package this python imports keeps its C library, and the
folders of the CUDA and cuDNN libraries it loads, for a Rust process (`crat`) to find them:

    read -r ORT_DYLIB_PATH NVIDIA_LIBS < <(python scripts/onnxruntime-gpu-libs.py)

(`scripts/onnxruntime-gpu-env.sh`, sourced, does that and exports what `crat` needs.)

Prints one line: the newest `libonnxruntime.so.*` in the package's `capi` folder, then a
`:`-separated list of every folder holding an `nvidia-*` wheel's libraries (`nvidia/**/lib*.so*`)
in any of this python's package folders (the virtual environment's, `PYTHONPATH`'s: on a
machine whose CUDA wheels came with another package, PyTorch's say), then `capi` itself. The
Python package preloads these libraries itself; a Rust process finds them on LD_LIBRARY_PATH.
Exits non-zero, naming what is missing, when onnxruntime or its library is not there.
"""

import glob
import os
import site
import sys

try:
    import onnxruntime
except ImportError as e:
    sys.exit(f"onnxruntime-gpu-libs: no onnxruntime package for {sys.executable}: {e}")

capi = os.path.join(os.path.dirname(onnxruntime.__file__), "capi")
libs = sorted(glob.glob(os.path.join(capi, "libonnxruntime.so.*")))
if not libs:
    sys.exit(f"onnxruntime-gpu-libs: no libonnxruntime.so.* in {capi}")
roots = [p for p in sys.path if p and os.path.isdir(p)]
roots += [p for p in site.getsitepackages() if os.path.isdir(p) and p not in roots]
dirs = []
for root in roots:
    pattern = os.path.join(root, "nvidia", "**", "lib*.so*")
    for lib in sorted(glob.glob(pattern, recursive=True)):
        d = os.path.dirname(lib)
        if d not in dirs:
            dirs.append(d)
print(libs[-1], ":".join(dirs + [capi]))
