"""Data-parallel training over MPI ranks: launch detection, communicators, the sharded epoch.

Launch. ``mpiexec -n R`` (MPICH, Intel MPI, Open MPI, MVAPICH) or ``srun`` starts R copies of the
program. ``launch_env`` recognises such a launch from the launcher's environment variables
(PMI_RANK/PMI_SIZE, OMPI_COMM_WORLD_RANK/SIZE, MV2_COMM_WORLD_RANK/SIZE, SLURM_PROCID/SLURM_NTASKS)
without importing mpi4py; only ``init`` imports it (which starts MPI). mpi4py and an MPI runtime come
from ``pip install 'pmm_gpu[mpi]'`` (the mpi4py and MPICH wheels).

Math. Every rank draws the same permutation from the same seed, so the global batch 𝔅 of step t
(B samples) is the same on all ranks. Rank r takes the contiguous shard 𝔅_r of
n_r = ⌊B(r+1)/R⌋ − ⌊Br/R⌋ samples, computes its mean loss L_r and gradient g_r = ∂L_r/∂θ, and one
all-reduce (sum) of the buffer

    [n_r·g_r, n_r·L_r, n_r]                     (P + 2 numbers, P = parameter count)

leaves Σ_r n_r g_r, Σ_r n_r L_r and Σ_r n_r = B on every rank. Then

    g = (1/B) Σ_r n_r g_r = ∂/∂θ (1/B) Σ_{b∈𝔅} ℓ_b

is the single-process gradient of the same global batch (up to rounding) for losses that are means
over samples (all built-in ones are). Every rank applies the same Adam step to the same θ, so the
parameters stay identical; ``DataParallel.check_parameters`` verifies that once per epoch.
Validation is sharded the same way and all-reduced, so early stopping, the divergence guard and the
best-parameter restore see the same numbers on every rank and decide identically.

Communicators. ``MpiCommunicator`` all-reduces NumPy buffers with MPI (CPU backend);
``NcclCommunicator`` all-reduces CuPy buffers with NCCL (cupy.cuda.nccl) on the compute stream (no host
synchronisation inside a step), set up once per process with the NCCL unique id broadcast over MPI.
One GPU per rank: ``init`` makes GPU (local rank mod GPU count) current, so call it before creating the
model (the ``pmm-gpu`` command does).

Failure. A rank that dies ends the job: the launcher (mpiexec's Hydra, Open MPI's ORTE/PRRTE, Slurm
with --kill-on-bad-exit) kills the other ranks and reports the dead one. An exception on one rank
during a distributed fit (or an uncaught one anywhere after ``init``) prints the message and calls
MPI_Abort, so no rank is left blocked in an all-reduce; MPI errors are fatal (MPI_ERRORS_ARE_FATAL).
"""
from __future__ import annotations

import copy
import functools
import os
import sys
import traceback
import zlib

import numpy as np

from .backend import USABLE_CORES, NumpyBackend, cuda_status, set_num_threads

# (rank, size, local rank) variables of the launchers, most specific first; the local rank may be absent.
LAUNCH_VARS = (("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
               ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
               ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_RANK"),
               ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"))
INSTALL_HINT = "pip install 'pmm_gpu[mpi]' (mpi4py and the MPICH wheels) or use a cluster's mpi4py"
# Parameters may differ across ranks by at most this many units of roundoff (× max |θ|); the all-reduce
# gives every rank the same sum, so in practice they are bitwise equal.
PARAM_RTOL_ULPS = 1000

_STATE = {"world": None, "comms": {}, "active": False}


def launch_env(environ=None) -> tuple[int, int, int | None] | None:
    """(rank, size, local_rank or None) of an MPI/Slurm launch from its environment variables, else None."""
    env = os.environ if environ is None else environ
    for rank, size, local in LAUNCH_VARS:
        if rank in env and size in env:
            try:
                return int(env[rank]), int(env[size]), (int(env[local]) if local in env else None)
            except ValueError:
                continue
    return None


def launched() -> bool:
    """True when this process is one of several ranks of an MPI (or Slurm) launch."""
    env = launch_env()
    return env is not None and env[1] > 1


def is_main() -> bool:
    """True on rank 0 (and in a process that was not launched under MPI): the rank that writes files."""
    world = _STATE["world"]
    if world is not None:
        return world.rank == 0
    env = launch_env()
    return env is None or env[0] == 0


def _import_mpi():
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as e:  # RuntimeError: mpi4py found no MPI library
        raise RuntimeError(f"distributed training needs mpi4py and an MPI runtime ({type(e).__name__}: {e}); "
                           f"{INSTALL_HINT}; or pass distributed=False to train on each rank alone") from e
    return MPI


class Communicator:
    """Ranks of one training job. ``allreduce(buf)``: in-place sum of a flat backend array over all
    ranks; ``host_allreduce(a, op)``: the same for a NumPy array over MPI ("sum" or "max"); ``abort``:
    end every rank with a message."""

    def __init__(self, mpi_comm, local_rank: int):
        self.mpi, self.rank, self.size, self.local_rank = mpi_comm, mpi_comm.Get_rank(), mpi_comm.Get_size(), local_rank

    def allreduce(self, buf):
        raise NotImplementedError

    def host_allreduce(self, a: np.ndarray, op: str = "sum") -> np.ndarray:
        from mpi4py import MPI  # already imported by init

        self.mpi.Allreduce(MPI.IN_PLACE, a, op={"sum": MPI.SUM, "max": MPI.MAX}[op])
        return a

    def abort(self, message: str, code: int = 1):
        sys.stderr.write(f"pmm_gpu: rank {self.rank} of {self.size}: {message}; aborting all {self.size} ranks "
                         "(MPI_Abort)\n")
        sys.stderr.flush()
        self.mpi.Abort(code)


class MpiCommunicator(Communicator):
    """CPU: MPI_Allreduce (sum, in place) on contiguous NumPy buffers."""

    def allreduce(self, buf):
        return self.host_allreduce(buf, "sum")


class NcclCommunicator(Communicator):
    """GPU: ncclAllReduce (sum, in place) on CuPy buffers, enqueued on the current (compute) stream.

    The NCCL communicator is created once on the current device: rank 0 draws the unique id, MPI
    broadcasts it, every rank calls ncclCommInitRank(size, id, rank).
    """

    def __init__(self, mpi_comm, local_rank: int):
        super().__init__(mpi_comm, local_rank)
        try:
            from cupy.cuda import nccl
        except ImportError as e:
            raise RuntimeError(f"GPU data parallelism needs NCCL through CuPy ({e}); pip install nvidia-nccl-cu12 "
                               "(or -cu13) matching the CuPy build") from e
        if not getattr(nccl, "available", True):
            raise RuntimeError("CuPy was built without NCCL (cupy.cuda.nccl.available is False); "
                               "pip install nvidia-nccl-cu12 (or -cu13) matching the CuPy build")
        uid = mpi_comm.bcast(nccl.get_unique_id() if self.rank == 0 else None, root=0)
        self.nccl, self._lib = nccl.NcclCommunicator(self.size, uid, self.rank), nccl
        self._types = {np.dtype(np.float64): nccl.NCCL_FLOAT64, np.dtype(np.float32): nccl.NCCL_FLOAT32}

    def allreduce(self, buf):
        import cupy

        self.nccl.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self._types[buf.dtype], self._lib.NCCL_SUM,
                            cupy.cuda.get_current_stream().ptr)
        return buf


def init(select_gpu: bool = True) -> Communicator:
    """Start MPI (imports mpi4py) and return the job's CPU communicator; idempotent.

    Duplicates MPI_COMM_WORLD with MPI_ERRORS_ARE_FATAL; with more than one rank installs an excepthook
    that aborts the job on an uncaught exception; with ``select_gpu`` and a usable GPU makes GPU
    (local rank mod device count) current, so call it before creating models on a multi-GPU node.
    """
    if _STATE["world"] is None:
        MPI = _import_mpi()
        comm = MPI.COMM_WORLD.Dup()
        comm.Set_errhandler(MPI.ERRORS_ARE_FATAL)
        env, node = launch_env(), comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks sharing this node
        local = env[2] if env is not None and env[2] is not None else node.Get_rank()
        share_cpu_threads(node.Get_size())
        _STATE["world"] = world = MpiCommunicator(comm, local)
        if world.size > 1:
            _install_excepthook(world)
        if select_gpu and cuda_status()[0]:
            import cupy

            cupy.cuda.Device(local % cupy.cuda.runtime.getDeviceCount()).use()
    return _STATE["world"]


def share_cpu_threads(ranks_on_node: int):
    """Split the node's cores among its ranks: a rank whose CPU thread count is still the default (every
    usable core) gets USABLE_CORES // ranks_on_node (at least 1), so ranks × threads do not oversubscribe
    the cores. A count set by ``pmm_gpu.set_num_threads`` is left alone."""
    if ranks_on_node > 1 and NumpyBackend.num_threads == USABLE_CORES:
        set_num_threads(max(1, USABLE_CORES // ranks_on_node))


def _install_excepthook(world: Communicator):
    previous = sys.excepthook

    def hook(kind, value, tb):
        previous(kind, value, tb)
        world.abort(f"uncaught {kind.__name__}: {value}")

    sys.excepthook = hook


def communicator(model) -> Communicator:
    """The communicator for a model's backend: MPI on the CPU; NCCL on CUDA, created once per GPU (the
    model's), after checking that the model sits on this rank's GPU."""
    world = init(select_gpu=False)
    if model.backend.name == "cpu":
        return world
    import cupy

    _check_gpu(model, world)
    dev = model.theta.device.id
    if dev not in _STATE["comms"]:
        with cupy.cuda.Device(dev):
            _STATE["comms"][dev] = NcclCommunicator(world.mpi, world.local_rank)
    return _STATE["comms"][dev]


def cli_setup():
    """For the ``pmm-gpu`` command: under an MPI launch of several ranks start MPI and pick the GPU
    (``init``) before any model exists, and send ranks other than 0 standard output to /dev/null."""
    if launched():
        if init().rank != 0:
            sys.stdout = open(os.devnull, "w")


def abort_on_error(fit):
    """Decorator for the trainer: an exception on one rank of a distributed fit of several ranks ends
    the whole job (message, then MPI_Abort) instead of leaving the other ranks blocked in an all-reduce."""

    @functools.wraps(fit)
    def guarded(*args, **kwargs):
        try:
            return fit(*args, **kwargs)
        except BaseException as e:
            if _STATE["active"]:
                traceback.print_exc()
                _STATE["world"].abort(f"{type(e).__name__} during distributed training: {e}")
            raise
        finally:
            _STATE["active"] = False

    return guarded


def checkpoint(model, path, every: int = 1):
    """A ``fit`` callback that saves ``model`` to ``path`` (``model.save``: atomic, parameters and Adam
    state) after every ``every``-th epoch, on rank 0 only; the file always holds a complete epoch."""
    def save(epoch, hist):
        if epoch % every == 0 and is_main():
            model.save(path)
    return save


def data_parallel(model, distributed, Xd, Yd, val, rng, epochs: int, batch_size: int):
    """The trainer's hook: a ``DataParallel`` for this fit, or None to train in this process alone.

    distributed: True (always; one rank is allowed), False (never), None (when ``launched()``: an MPI
    launch of several ranks). Checks that every rank has the same data, seed, epochs, batch size and
    initial parameters (a clear error instead of a hang or silently different batches).
    """
    if distributed is None:
        distributed = launched() and init(select_gpu=False).size > 1
    if not distributed:
        return None
    _STATE["active"] = init(select_gpu=False).size > 1  # from here on an exception aborts the job
    dp = DataParallel(model, communicator(model))
    dp.check_setup(Xd, Yd, val, rng, epochs, batch_size)
    return dp


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous part [lo, hi) of n samples: lo = ⌊n·r/R⌋, hi = ⌊n·(r+1)/R⌋ (sizes differ
    by at most one; empty when n < R)."""
    return n * rank // size, n * (rank + 1) // size


class DataParallel:
    """The sharded epoch (module doc, "Math") of one model on one communicator."""

    def __init__(self, model, comm: Communicator):
        self.model, self.comm, self.rank, self.size = model, comm, comm.rank, comm.size
        self.host = _STATE["world"]
        P = model.n_params
        self.buf = model.backend.xp.zeros(P + 2, dtype=model.real_dtype)  # [Σ n_r g_r, Σ n_r L_r, Σ n_r]

    def shard(self, n: int) -> tuple[int, int]:
        return shard_bounds(n, self.rank, self.size)

    def train_epoch(self, model, opt, Xd, Yd, batch_size: int, rng, loss_fn, micro_batch=None) -> float:
        """One pass in a fresh random order (the same draw as train._train_epoch). Per step: the shard's
        gradient and loss (in micro-batches if asked), one all-reduce of ``buf``, g = Σ n_r g_r / B into
        model.grad, one Adam step. Returns the mean training loss; checks the parameters when it is finite."""
        N, P, buf, xp = len(Xd), model.n_params, self.buf, model.backend.xp
        perm = model.backend.asarray(rng.permutation(N))
        total = xp.zeros((), dtype=model.real_dtype)
        model.eigh_failures.fill(0)
        for s in range(0, N, batch_size):
            lo, hi = self.shard(min(batch_size, N - s))
            if hi > lo:
                idx = perm[s + lo:s + hi]
                value = model.device_loss_and_grad(Xd[idx], Yd[idx], loss_fn, buf[:P], micro_batch)
                buf[:P] *= hi - lo
                buf[P] = value * (hi - lo)
            else:  # fewer samples than ranks: this rank contributes nothing
                buf[:P + 1] = 0
            buf[P + 1] = hi - lo
            self.comm.allreduce(buf)
            xp.divide(buf[:P], buf[P + 1], out=model.grad)
            total += buf[P]
            opt.step()
        model.eigh_failures.fill(int(self.host.host_allreduce(np.array([int(model.eigh_failures)]))[0]))
        loss = float(total) / N
        if np.isfinite(loss):
            self.check_parameters()
        return loss

    def evaluate(self, model, X, Y, loss_fn, batch_size: int = 8192) -> float:
        """Mean loss over (X, Y), each rank on its shard, summed over ranks (as train.evaluate); the
        ranks' eigensolver failures of the pass are added to every rank's counter."""
        xp, (lo, hi) = model.backend.xp, self.shard(len(X))
        failed_before = int(model.eigh_failures)
        total = xp.zeros((), dtype=model.real_dtype)
        for s in range(lo, hi, batch_size):
            e = min(s + batch_size, hi)
            out = model.device_predict(X[s:e])
            total += loss_fn(out, Y[s:e])[0] * (e - s)
        sums = self.host.host_allreduce(np.array([float(total), int(model.eigh_failures) - failed_before]))
        model.eigh_failures.fill(failed_before + int(sums[1]))
        return float(sums[0]) / len(X)

    def check_parameters(self):
        """Elementwise max over ranks of [θ, −θ] gives the spread max_r θ − min_r θ; a RuntimeError if it
        exceeds PARAM_RTOL_ULPS·eps·max|θ| (the ranks have diverged)."""
        theta = self.model.backend.to_numpy(self.model.theta).astype(np.float64)
        both = self.host.host_allreduce(np.concatenate([theta, -theta]), "max")
        spread = float(np.max(both[:theta.size] + both[theta.size:], initial=0.0))
        bound = PARAM_RTOL_ULPS * np.finfo(self.model.real_dtype).eps * float(np.max(np.abs(both), initial=0.0))
        if not spread <= bound:
            raise RuntimeError(f"parameters differ across the {self.size} ranks by up to {spread:.3e} (allowed "
                               f"{bound:.1e}): the ranks have diverged (different code, data or hardware results)")

    def agree(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (e.g. a stop request that reached one rank
        first): a decision the ranks must take together, or they would leave the step loop apart."""
        return bool(self.host.host_allreduce(np.array([int(bool(flag))]), "max")[0])

    def check_setup(self, Xd, Yd, val, rng, epochs: int, batch_size: int):
        """Every rank must agree on these (else steps would differ, or the job would hang)."""
        be = self.model.backend
        facts = {"training samples": len(Xd), "batch_size": batch_size, "epochs": epochs,
                 "validation samples": -1 if val is None else len(val[0]),
                 "training data (CRC-32)": _crc(be, Xd, Yd), "validation data (CRC-32)": _crc(be, *(val or ())),
                 "random stream (seed)": copy.deepcopy(rng).integers(2**52), "parameter count": self.model.n_params}
        v = np.array(list(facts.values()), dtype=np.float64)
        both = self.host.host_allreduce(np.concatenate([v, -v]), "max")
        differ = [k for k, hi, lo in zip(facts, both[:v.size], -both[v.size:]) if hi != lo]
        if differ:
            raise RuntimeError(f"the {self.size} ranks disagree on {', '.join(differ)}: every rank must call fit "
                               "with the same data, seed (an int, not None), epochs and batch_size")
        self.check_parameters()


def _crc(backend, *arrays) -> int:
    crc = 0
    for a in arrays:
        crc = zlib.crc32(np.ascontiguousarray(backend.to_numpy(a)).tobytes(), crc)
    return crc


def _check_gpu(model, world: Communicator):
    import cupy

    want = world.local_rank % cupy.cuda.runtime.getDeviceCount()
    have = model.theta.device.id
    if have != want:
        raise RuntimeError(f"rank {world.rank} (local rank {world.local_rank}) holds its model on GPU {have}, "
                           f"expected GPU {want}: call pmm_gpu.distributed.init() before creating the model")
