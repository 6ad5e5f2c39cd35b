"""The handle a hook registration returns (``torch.utils.hooks.RemovableHandle``'s place in xpnet)."""

from __future__ import annotations

import itertools
from typing import Any

_ids = itertools.count()


class RemovableHandle:
    """Takes one registered hook off again: ``remove()`` (safe to call twice), or leaving a ``with handle:`` block.

    ``id`` is the hook's key in the dict it was registered in, unique in the process, as in PyTorch.
    """

    def __init__(self, hooks: dict[int, Any]):
        self.hooks_dict = hooks
        self.id = next(_ids)

    def remove(self) -> None:
        self.hooks_dict.pop(self.id, None)

    def __enter__(self) -> RemovableHandle:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.remove()
