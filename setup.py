"""Build of vecdb's native extensions.

Every ``native/*.pyx`` becomes ``vecdb.<name>`` and is linked with the one C distance layer
(``native/vd_simd.c``). SIMD paths are selected per function with target attributes, so the
build uses only portable flags: no -march=native, no -ffast-math.
"""
import glob
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

NATIVE = "native"

compile_args = ["-O3", "-fno-strict-aliasing", "-Wno-unused-function"]

# VECDB_BUILD_ONLY=_hnsw,_native limits a developer's in-place rebuild to some modules.
ONLY = {m for m in os.environ.get("VECDB_BUILD_ONLY", "").split(",") if m}

extensions = []
for pyx in sorted(glob.glob(os.path.join(NATIVE, "*.pyx"))):
    name = os.path.splitext(os.path.basename(pyx))[0]
    if ONLY and name not in ONLY:
        continue
    extra_c = sorted(glob.glob(os.path.join(NATIVE, f"{name}_*.c")))
    extensions.append(
        Extension(
            f"vecdb.{name}",
            sources=[pyx, os.path.join(NATIVE, "vd_simd.c"), *extra_c],
            include_dirs=[NATIVE, np.get_include()],
            extra_compile_args=compile_args,
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
    )

setup(
    ext_modules=cythonize(
        extensions,
        include_path=[NATIVE],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
