"""Bridges to other frameworks: ``xpnet.interop.torch`` (to_torch, from_torch, load_state_dict; imports torch
only when imported itself) and, for arrays, DLPack: ``Tensor.__dlpack__`` and ``from_dlpack``."""

from xpnet.autograd import from_dlpack

__all__ = ["from_dlpack"]
