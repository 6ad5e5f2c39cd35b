"""Cold start: a helper process compiles the backward pass's kernels while the forward pass compiles its own.

The first run after install compiles every kernel a model uses (LLVM at -O3, seconds each) into Numba's disk
cache, one kernel at a time: Numba holds a global compiler lock, so threads cannot share the work. A first training
step spends about as long compiling its backward kernels as its forward ones, on one core of several. So when a
forward op runs under autograd and its backward kernels are not on disk yet, the Numba backend names the op here
(``Ahead.expect``), and one helper process (``python -m xpnet.backends.numba_ahead``, started for the first such
op) compiles them into the same cache, one op at a time, the newest first (the backward pass meets the ops in
reverse). Before an op's backward kernel runs, ``Ahead.wait`` blocks while the helper is compiling that op, then Numba loads it from disk; an op the
helper has not started yet is taken back, and the main process compiles it itself as it would without a helper.

Only the disk cache is shared, and Numba writes its files atomically (a temporary file, then a rename), so a helper
that fails, or is stopped when the main process exits, costs only the time it would have saved. A helper idle for
``IDLE_EXIT_S`` exits, and the next op that needs one starts another. ``XPNET_NUMBA_AHEAD=0`` turns the helper
off; it is never used when the kernels are not cached (``NUMBA_BOUNDSCHECK=1``, ``numba_jit``).
"""

from __future__ import annotations

import atexit
import os
import select
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterable

from xpnet.backends.numba_jit import CACHE

ENV = "XPNET_NUMBA_AHEAD"
IDLE_EXIT_S = 5.0  # a helper with nothing to do exits (it holds about 150 MB); the next request starts another
MAX_STARTS = 3  # helpers one process may start: one that keeps exiting is not started forever


def enabled() -> bool:
    """Whether backward kernels may compile in a helper: the kernels are cached and ``XPNET_NUMBA_AHEAD`` is not 0."""
    return CACHE and os.environ.get(ENV, "1").strip() != "0"


def on_disk(kernel: Any) -> bool:
    """Whether Numba's disk cache holds an index file for ``kernel`` (for any signature). Numba names it after the
    function's qualified name and first line (``numba.core.caching``); should that naming change, every kernel
    looks uncached and the helper only loads what is there."""
    code = kernel.py_func.__code__
    pattern = f"*.{kernel.py_func.__qualname__}-{code.co_firstlineno}.py*.nbi"
    return any(Path(kernel.stats.cache_path).glob(pattern))


class Ahead:
    """The main process's side: which ops wait for the helper, the one it is compiling, and the helper itself."""

    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        """Start afresh: in a forked child, whose parent's helper and lock are not its own."""
        self._cond = threading.Condition()
        self._seen: set[tuple[str, str]] = set()
        self._queue: list[tuple[str, str]] = []
        self._busy: tuple[str, str] | None = None
        self._helper: subprocess.Popen[str] | None = None
        self._starts = 0

    def expect(self, op: str, dtype: str, kernels: Iterable[Any]) -> None:
        """The forward pass met ``op`` in ``dtype``: queue its backward for the helper unless ``kernels`` (its
        backward kernels) are all on disk already. Each (op, dtype) is considered once per process."""
        key = (op, dtype)
        with self._cond:
            if key in self._seen:
                return
            self._seen.add(key)
        if not enabled() or all(on_disk(k) for k in kernels):
            return
        with self._cond:
            self._queue.append(key)
            self._send_next()

    def wait(self, op: str, dtype: str) -> None:
        """Before ``op``'s backward kernels run: take the op back if the helper has not started it, else wait until
        the helper has compiled it (or exited)."""
        key = (op, dtype)
        with self._cond:
            while self._busy == key:
                self._cond.wait()
            if key in self._queue:  # not started, or handed back by a helper that exited
                self._queue.remove(key)

    def _send_next(self) -> None:
        """Hand the helper the next queued op if it is idle (caller holds the lock)."""
        if self._busy is not None or not self._queue:
            return
        if self._helper is None and not self._start():
            return
        key = self._queue.pop()  # the newest first
        try:
            self._helper.stdin.write(f"{key[0]} {key[1]}\n")
            self._helper.stdin.flush()
        except OSError:  # it has just exited: its reader starts another for what is queued
            self._queue.append(key)
            return
        self._busy = key

    def _start(self) -> bool:
        """Start a helper, its reply reader and its stop at exit; False if it cannot (the queue then waits for
        the main process to take each op back)."""
        if self._starts >= MAX_STARTS:
            return False
        self._starts += 1
        try:
            helper = subprocess.Popen([sys.executable, "-m", "xpnet.backends.numba_ahead"], text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError:
            self._starts = MAX_STARTS
            return False
        self._helper = helper
        threading.Thread(target=self._read_replies, args=(helper,), daemon=True, name="xpnet-numba-ahead").start()
        atexit.register(self._stop, helper, os.getpid())
        return True

    def _read_replies(self, helper: subprocess.Popen[str]) -> None:
        """One line per op the helper finished (compiled, or failed: the main process then compiles it); when
        the helper exits (idle, or failed), an op it was given goes back to the queue for the next one."""
        for _ in helper.stdout:
            with self._cond:
                self._busy = None
                self._send_next()
                self._cond.notify_all()
        helper.wait()
        with self._cond:
            if self._busy is not None:
                self._queue.append(self._busy)
            self._busy, self._helper = None, None
            self._send_next()
            self._cond.notify_all()

    @staticmethod
    def _stop(helper: subprocess.Popen[str], owner: int) -> None:
        """At the owner's exit (not a forked child's): an idle helper ends when its input closes; one still
        compiling is stopped."""
        if os.getpid() != owner:
            return
        try:
            helper.stdin.close()
            helper.wait(timeout=0.2)
        except (OSError, subprocess.TimeoutExpired):
            helper.kill()


AHEAD = Ahead()
"""The process's one helper, shared by every Numba backend instance."""
os.register_at_fork(after_in_child=AHEAD.forget)


def main() -> None:
    """The helper: for each "OP DTYPE" line, compile (or load) that op's backward kernels, then reply one line."""
    from xpnet.backends.numba import NumbaBackend

    while True:
        # The main process sends the next op only after this one's reply, so no second line waits in stdin's
        # buffer where select cannot see it.
        if os.name == "posix" and not select.select([sys.stdin], [], [], IDLE_EXIT_S)[0]:
            return
        line = sys.stdin.readline()
        if not line:
            return
        op, dtype = line.split()
        try:
            NumbaBackend.compile_backward(op, dtype)
            reply = "compiled"
        except Exception as error:  # the main process compiles what the helper could not
            reply = f"failed {type(error).__name__}"
        print(reply, op, dtype, flush=True)


if __name__ == "__main__":
    main()
