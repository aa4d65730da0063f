"""The engine's C kernels: compiled on first use with the machine's C compiler, loaded with ctypes.

Nothing to install: the first process that needs them runs `cc -O3 -march=native -fopenmp` on the sources
here (well under a second) into a cache folder ($LAB_NATIVE_CACHE, else ~/.cache/mnist-lab/native), named by a
hash of the sources, the flags and this CPU, so a shared home on another CPU builds its own. No compiler, a
failed build or LAB_NATIVE=0 in the environment: `library()` is None (the reason in `why_not()`) and the engine
runs torch's ops instead, the same maths (core/layers.py's tests hold both paths to each other).

The library links OpenMP by its soname (libgomp.so.1), which torch has already loaded: both share one thread
pool, so the kernels' threads do not fight torch's on a small machine.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch  # noqa: F401 - loads torch's libgomp before ours is linked against it

SOURCES = ("relu_bn_dropout.c",)
FLAGS = ("-O3", "-march=native", "-fno-trapping-math", "-fopenmp", "-fPIC", "-shared", "-std=c11")
_why_not = ""


def _cpu_id() -> str:
    """What a -march=native build depends on: the CPU's model and feature flags (Linux), else the platform."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor() or platform.machine()


def cache_dir() -> Path:
    explicit = os.environ.get("LAB_NATIVE_CACHE")
    return Path(explicit) if explicit else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mnist-lab" / "native"


def _places() -> list[Path]:
    """Where a build may go: the cache folder, else (a read-only home) a folder of this user's in the temp dir."""
    return [cache_dir(), Path(tempfile.gettempdir()) / f"mnist-lab-native-{os.getuid() if hasattr(os, 'getuid') else 0}"]


def _build(compiler: str, target: Path) -> None:
    here = Path(__file__).parent
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name, suffix=".tmp", dir=target.parent)  # another process may build too
    os.close(fd)
    try:
        done = subprocess.run([compiler, *FLAGS, *(str(here / s) for s in SOURCES), "-o", tmp, "-lm"],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise OSError(f"{compiler} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
        os.replace(tmp, target)  # whole or not at all
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None where they are off or cannot be built here (why_not() says which)."""
    global _why_not
    if os.environ.get("LAB_NATIVE", "1") == "0":
        _why_not = "LAB_NATIVE=0"
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        _why_not = "no C compiler (cc/gcc) on PATH"
        return None
    here = Path(__file__).parent
    key = hashlib.sha256()
    for part in (*(here.joinpath(s).read_bytes() for s in SOURCES), " ".join(FLAGS).encode(), compiler.encode(),
                 _cpu_id().encode()):
        key.update(part)
    name, lib = f"lab_kernels-{key.hexdigest()[:16]}.so", None
    for place in _places():
        target = place / name
        try:
            if not target.exists():
                _build(compiler, target)
            lib = ctypes.CDLL(str(target))
            break
        except (OSError, subprocess.SubprocessError) as e:
            _why_not = f"could not build or load the C kernels in {place}: {e}"
    if lib is None:
        logging.getLogger(__name__).warning("%s; training runs on torch's ops (the same numbers, ~1.6x slower steps)", _why_not)
        return None
    _why_not = ""
    f32, i64, u32, c_int, c_float = (ctypes.POINTER(ctypes.c_float), ctypes.c_int64, ctypes.c_uint32, ctypes.c_int,
                                     ctypes.c_float)
    lib.lab_keep_factors.argtypes = [f32, i64, u32, u32, u32, c_float, c_int]
    lib.lab_keep_factors.restype = None
    lib.lab_rbd_forward.argtypes = [f32, f32, i64, c_int, f32, f32, c_float, u32, u32, u32, c_float, f32, f32, f32, c_int]
    lib.lab_rbd_backward.argtypes = [f32, f32, f32, i64, c_int, f32, f32, f32, u32, u32, u32, c_float, f32, f32, c_int]
    lib.lab_rbd_forward.restype = lib.lab_rbd_backward.restype = c_int
    return lib


def why_not() -> str:
    """Why library() is None ("" when it is not, or not asked yet)."""
    return _why_not
