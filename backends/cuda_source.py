"""The C parameter lists of a CUDA source's ``extern "C"`` kernels, and the check that launch arguments fit them.

A kernel launch copies each argument's bytes as given, and CuPy checks none of them against the kernel (it sends
a Python ``int`` as a 64-bit ``long long``), so a wrong scalar width would be misread silently. Reading the
parameter lists from the .cu itself keeps one source of truth for what a kernel takes. Needs no GPU and no cupy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

# C parameter types the kernels use -> the NumPy dtype an argument must have (pointers: the pointee's dtype).
C_TYPES = {"int": np.int32, "float": np.float32, "double": np.float64}

_ENTRY = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)')
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)


@dataclass(frozen=True)
class Param:
    """One kernel parameter as declared in the .cu: its name and C type (``"const float*"``, ``"int"``)."""

    name: str
    ctype: str

    @property
    def is_pointer(self) -> bool:
        """True for a pointer parameter (an array argument), False for a by-value scalar."""
        return self.ctype.endswith("*")

    @property
    def dtype(self) -> np.dtype:
        """The NumPy dtype of the argument (scalar) or of the array's elements (pointer)."""
        base = self.ctype.removeprefix("const ").removesuffix("*").strip()
        if base not in C_TYPES:
            raise TypeError(f"kernel parameter {self.name!r} has C type {self.ctype!r}, which has no NumPy dtype here")
        return np.dtype(C_TYPES[base])


def kernel_params(source: str) -> dict[str, tuple[Param, ...]]:
    """Each ``extern "C" __global__`` entry point in CUDA ``source`` with its parameter list, read from the source."""
    entries = {}
    for name, params in _ENTRY.findall(_COMMENT.sub("", source)):
        entries[name] = tuple(_parse_param(text) for text in params.split(","))
    return entries


def _parse_param(text: str) -> Param:
    """``"const float* __restrict__ cols"`` -> Param("cols", "const float*")."""
    words = text.replace("*", " * ").replace("__restrict__", " ").split()
    return Param(words[-1], " ".join(words[:-1]).replace(" *", "*"))


def check_args(kernel: str, params: tuple[Param, ...], args: tuple[Any, ...]) -> None:
    """Raise TypeError unless ``args`` match ``params`` one for one, with exactly the declared widths.

    Pointers take C-contiguous arrays (NumPy or CuPy) of the pointee's dtype; scalars take NumPy scalars of the
    C type's dtype, so an ``np.int64`` or ``int`` where the kernel reads ``int`` is refused, not misread.
    """
    if len(args) != len(params):
        raise TypeError(f"{kernel} takes {len(params)} arguments ({', '.join(p.name for p in params)}), "
                        f"got {len(args)}")
    for param, arg in zip(params, args):
        what = f"{kernel} argument {param.name!r} ({param.ctype})"
        if param.is_pointer:
            if isinstance(arg, np.generic) or not hasattr(arg, "flags"):
                raise TypeError(f"{what} needs an array of {param.dtype}, got {type(arg).__name__}")
            if arg.dtype != param.dtype:
                raise TypeError(f"{what} needs an array of {param.dtype}, got an array of {arg.dtype}")
            if not arg.flags.c_contiguous:
                raise TypeError(f"{what} needs a C-contiguous array")
        elif not isinstance(arg, np.generic) or arg.dtype != param.dtype:
            got = f"np.{arg.dtype}" if isinstance(arg, np.generic) else f"a Python {type(arg).__name__}"
            raise TypeError(f"{what} needs an np.{param.dtype} scalar, got {got}")
