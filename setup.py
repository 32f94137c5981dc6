"""Build xaikernels and, when torch is importable, its compiled extension ``xaikernels._C``.

- ``csrc/*.cpp`` (CPU kernels, OpenMP, C++20) are always compiled when torch is importable.
- ``csrc/cuda/*.cu`` are added only when the installed torch is a CUDA build and ``nvcc`` is
  found, or when ``XAIKERNELS_FORCE_CUDA=1`` is set.  ``XAIKERNELS_NO_EXT=1`` skips the
  extension entirely (the package then serves every op from its reference/Triton/Numba paths).

torch is never a build requirement: install it first, then
``pip install --no-build-isolation -e .``.
"""
import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _extensions():
    if os.environ.get("XAIKERNELS_NO_EXT") == "1":
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("xaikernels: torch not importable at build time; building without _C", file=sys.stderr)
        return [], {}

    cpp = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cu = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    want_cuda = os.environ.get("XAIKERNELS_FORCE_CUDA") == "1" or (
        torch.version.cuda is not None and shutil.which("nvcc") is not None
    )
    # -fopenmp must be on both compile and link lines, or at::parallel_for runs single-threaded.
    # No -std flag: each torch builds extensions in its own standard (C++17 before 2.13, C++20
    # since), and the sources compile in both.
    cxx = ["-O3", "-fopenmp", "-g0", "-DXAIKERNELS_EXT"]
    link = ["-fopenmp"]
    if want_cuda and cu:
        ext = cpp_extension.CUDAExtension(
            "xaikernels._C",
            cpp + cu,
            extra_compile_args={"cxx": cxx + ["-DXAIKERNELS_WITH_CUDA"], "nvcc": ["-O3"]},
            extra_link_args=link,
            py_limited_api=False,
        )
    else:
        ext = cpp_extension.CppExtension(
            "xaikernels._C", cpp, extra_compile_args={"cxx": cxx}, extra_link_args=link
        )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
