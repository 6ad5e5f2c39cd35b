"""The handle a hook registration returns (``torch.utils.hooks.RemovableHandle``'s place in xpnet), and
``module_stack``, which tools that trace a forward pass use to name the module running."""

from __future__ import annotations

import contextlib
import itertools
from typing import Any, Iterator

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


@contextlib.contextmanager
def module_stack(model: Any, root_name: str) -> Iterator[list[str]]:
    """While the block runs, the list holds the dotted names of ``model``'s modules whose forward is running,
    innermost last (a forward pre-hook on each pushes, a forward hook pops); ``model`` itself is ``root_name``."""
    stack: list[str] = []

    def leave(module: Any, args: tuple, output: Any) -> None:
        stack.pop()

    handles = []
    for name, module in model.named_modules():
        handles += [module.register_forward_pre_hook(lambda m, args, name=name or root_name: stack.append(name)),
                    module.register_forward_hook(leave)]
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()
