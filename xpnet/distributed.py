"""Data-parallel training over MPI: ``mpiexec -n 4 python -m mpi4py -m xpnet.train ...``.

Every rank iterates the same global batches (same seed) and keeps its ``np.array_split`` share of each, so the
batch size and learning rate mean what they mean in one process. The gradients of the shards' mean losses,
weighted by shard size / batch size, are summed by one in-place Allreduce of a flat buffer: every rank applies
the same update and the run reproduces the single-process one up to rounding. Each shard is also set as the
process's batch shard (``xpnet.random.set_batch_shard``), from which dropout draws the global batch's masks and
keeps its rows, as one process would draw them. On the CuPy backend the buffers
go through NCCL instead, on each rank's own GPU. mpi4py is imported only when a launcher started several ranks:
``import xpnet`` and single-process training never import it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from typing import Any, Callable, Sequence

import numpy as np

from xpnet import random
from xpnet.backend import ENV_VAR, BackendUnavailable, get_backend
from xpnet.data import DataLoader
from xpnet.nn import Parameter

# World-size variables set by launchers: MPICH/Hydra, Intel MPI and srun --mpi=pmi2; Open MPI; MVAPICH2.
SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
ABORT_GRACE_S = 0.5  # a failing rank waits this long between flushing its traceback and MPI_Abort


def launched_size() -> int:
    """How many ranks the launcher started (1 outside one); imports mpi4py only when there is a launcher."""
    for var in SIZE_VARS:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    if "mpi4py" in sys.modules:  # ``python -m mpi4py`` under a launcher that sets none of SIZE_VARS
        from mpi4py import MPI
        return MPI.COMM_WORLD.Get_size()
    return 1


class World:
    """One process alone: its shard is the whole batch and every collective hands its input back."""

    rank = 0
    size = 1

    def bounds(self, n: int) -> tuple[int, int]:
        """Rows ``[lo, hi)`` of an ``n``-row batch that are this rank's: its ``np.array_split`` piece."""
        q, r = divmod(n, self.size)
        lo = self.rank * q + min(self.rank, r)
        return lo, lo + q + int(self.rank < r)

    def shard(self, x: Any, y: Any) -> tuple[Any, Any]:
        """This rank's rows of global batch ``(x, y)``; the split is kept for ``average_gradients``."""
        lo, hi = self.bounds(len(y))
        self._rows = (lo, hi, len(y))
        return x[lo:hi], y[lo:hi]

    def average_gradients(self, params: Sequence[Parameter]) -> None:
        """Make each ``p.grad`` the gradient of the global batch's mean loss (alone it already is)."""

    def broadcast_parameters(self, params: Sequence[Parameter]) -> None:
        """Give every rank rank 0's parameter values (alone there is nothing to do)."""

    def sum(self, values: Sequence[float]) -> np.ndarray:
        """The element-wise sum over ranks of ``values`` (host numbers), as float64."""
        return np.array(values, dtype=np.float64)

    def gather(self, local: np.ndarray) -> np.ndarray:
        """Every rank's 1-D host array joined in rank order, on every rank."""
        return local

    def broadcast_text(self, text: str) -> str:
        """Rank 0's ``text`` on every rank (such as the run folder rank 0 chose)."""
        return text

    def shard_loader(self, loader: DataLoader) -> DataLoader:
        """A loader over this rank's contiguous share of an unshuffled ``loader``'s set, batched the same way."""
        return loader


class MpiWorld(World):
    """One rank of an MPI job: host collectives through mpi4py, device buffers through ``_allreduce``/``_bcast``."""

    def __init__(self, comm: Any):
        from mpi4py import MPI

        self._mpi = MPI
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self._rows = (0, 0, 0)
        self._buffer: Any = None

    def shard(self, x: Any, y: Any) -> tuple[Any, Any]:
        """This rank's rows of global batch ``(x, y)``, also set as the process's batch shard
        (``xpnet.random.set_batch_shard``) so dropout draws the global batch's masks and keeps these rows."""
        x, y = super().shard(x, y)
        random.set_batch_shard(*self._rows)
        return x, y

    def average_gradients(self, params: Sequence[Parameter]) -> None:
        """Sum ``grad * shard size / batch size`` over ranks: the gradient of the global batch's mean loss.

        The gradients travel in one flat buffer, one in-place Allreduce per step, followed by one slot per
        parameter counting the ranks that had a gradient for it: a rank whose shard was empty (a global batch
        with fewer rows than ranks) computed none, yet applies the same update as the others.
        """
        lo, hi, n = self._rows
        xp = get_backend().xp
        buffer, views = self._flat(params)
        flags = buffer[len(buffer) - len(params):]
        for i, (p, view) in enumerate(zip(params, views)):
            if p.grad is None:
                view[...] = 0
            else:
                xp.multiply(p.grad, (hi - lo) / n, out=view)
            flags[i] = p.grad is not None
        self._allreduce(buffer)
        for p, view, had_grad in zip(params, views, flags.tolist()):
            p.grad = view if had_grad else None

    def broadcast_parameters(self, params: Sequence[Parameter]) -> None:
        """Copy rank 0's parameter values to every rank (in one flat buffer), whatever each rank drew."""
        buffer, views = self._flat(params)
        for p, view in zip(params, views):
            view[...] = p.data
        self._bcast(buffer)
        for p, view in zip(params, views):
            p.data[...] = view

    def sum(self, values: Sequence[float]) -> np.ndarray:
        out = np.array(values, dtype=np.float64)
        self.comm.Allreduce(self._mpi.IN_PLACE, out, op=self._mpi.SUM)
        return out

    def broadcast_text(self, text: str) -> str:
        return str(self.comm.bcast(str(text) if self.rank == 0 else None, root=0))

    def gather(self, local: np.ndarray) -> np.ndarray:
        local = np.ascontiguousarray(local)
        counts = self.comm.allgather(len(local))
        out = np.empty(sum(counts), dtype=local.dtype)
        self.comm.Allgatherv(local, (out, counts))
        return out

    def shard_loader(self, loader: DataLoader) -> DataLoader:
        lo, hi = self.bounds(len(loader.dataset))
        return DataLoader(loader.dataset.subset(np.arange(lo, hi)), loader.batch_size, to_device=loader.to_device,
                          dtype=loader.dtype, preload=loader.preload, transform=loader.transform)

    def abort(self, code: int) -> None:
        """End every rank of the job with exit status ``code`` (the others may be waiting in a collective).

        The launcher stops forwarding output once Abort begins, so the rank first gives it ``ABORT_GRACE_S`` to
        read what was just flushed (the traceback that says why the job ended)."""
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_S)
        self.comm.Abort(code)

    def _flat(self, params: Sequence[Parameter]) -> tuple[Any, list[Any]]:
        """One device buffer with room for every parameter plus one flag each, and a view per parameter."""
        dtypes = {p.dtype for p in params}
        if len(dtypes) != 1:
            raise TypeError(f"distributed training needs parameters of one dtype, got {sorted(map(str, dtypes))}")
        size = sum(p.size for p in params) + len(params)
        if self._buffer is None or self._buffer.size != size or self._buffer.dtype != params[0].dtype:
            self._buffer = get_backend().xp.empty(size, dtype=params[0].dtype)
        views, offset = [], 0
        for p in params:
            views.append(self._buffer[offset:offset + p.size].reshape(p.shape))
            offset += p.size
        return self._buffer, views

    def _allreduce(self, buffer: Any) -> None:
        self.comm.Allreduce(self._mpi.IN_PLACE, buffer, op=self._mpi.SUM)

    def _bcast(self, buffer: Any) -> None:
        self.comm.Bcast(buffer, root=0)


class NcclWorld(MpiWorld):
    """An MPI rank on the CuPy backend: MPI for start-up and host numbers, NCCL for the device buffers."""

    def __init__(self, comm: Any, local_rank: int):
        import cupy
        from cupy.cuda import nccl

        if not nccl.available:
            raise BackendUnavailable("distributed training on the CuPy backend needs NCCL, which cupy cannot load "
                                     "here; install it with: pip install 'nvidia-nccl-cu12>=2.18.1,<3' (CUDA 12) or "
                                     "'nvidia-nccl-cu13' (CUDA 13)")
        super().__init__(comm)
        _use_local_gpu(local_rank)
        self._cupy, self._nccl = cupy, nccl
        self._types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
        unique_id = comm.bcast(nccl.get_unique_id() if self.rank == 0 else None, root=0)
        self._comm = nccl.NcclCommunicator(self.size, unique_id, self.rank)

    def _allreduce(self, buffer: Any) -> None:
        stream = self._cupy.cuda.get_current_stream().ptr
        self._comm.allReduce(buffer.data.ptr, buffer.data.ptr, buffer.size, self._types[np.dtype(buffer.dtype)],
                             self._nccl.NCCL_SUM, stream)

    def _bcast(self, buffer: Any) -> None:
        stream = self._cupy.cuda.get_current_stream().ptr
        self._comm.bcast(buffer.data.ptr, buffer.size, self._types[np.dtype(buffer.dtype)], 0, stream)


def _use_local_gpu(local_rank: int) -> None:
    """Make GPU ``local_rank`` (modulo the GPUs visible) current, so ranks on one host use different GPUs."""
    import cupy

    cupy.cuda.Device(local_rank % cupy.cuda.runtime.getDeviceCount()).use()


_current: World = World()


def world() -> World:
    """The world set up by ``init()``; a lone process's until then."""
    return _current


def init() -> World:
    """Join the MPI job this process was launched in, if any (else stay alone); idempotent.

    On the CuPy backend each rank first takes its host-local GPU, then the ranks build an NCCL communicator.
    """
    global _current
    if _current.size > 1 or launched_size() <= 1:
        return _current
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    local_rank = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
    if os.environ.get(ENV_VAR, "").strip().lower() == "cupy":
        with contextlib.suppress(ImportError, RuntimeError):  # no cupy or no GPU: the backend says why below
            _use_local_gpu(local_rank)  # before the backend's device probe touches the default GPU
    _current = NcclWorld(comm, local_rank) if get_backend().name == "cupy" else MpiWorld(comm)
    return _current


def run(main: Callable[[], int]) -> int:
    """Call a command's ``main``; in a multi-rank job a failure on any rank (an exception or a non-zero exit)
    aborts every rank, since the others would otherwise wait forever in their next collective."""
    try:
        code = main()
    except SystemExit as exc:
        if isinstance(_current, MpiWorld) and exc.code:
            _current.abort(exc.code if isinstance(exc.code, int) else 1)
        raise
    except BaseException:
        if isinstance(_current, MpiWorld):
            sys.stderr.write(traceback.format_exc())  # one write: the launcher may drop output once Abort begins
            sys.stderr.flush()
            _current.abort(1)
        raise
    if code and isinstance(_current, MpiWorld):
        _current.abort(code)
    return code
