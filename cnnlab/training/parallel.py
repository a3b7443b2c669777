"""Both cores for every batch: the batch is cut into shards, one per thread, and each thread runs
the same model on its shard. (On the main thread, where the platform forks, the shards beyond
the first run in worker processes instead: ``training.workers``.)

Layers keep no per-call state, so the threads share the model as it is: each call's caches live
on its own tape, its scratch buffers in its own thread's workspace, its random draws in a
generator of its own. During the parallel part BLAS is limited to one thread per shard, so the
machine runs one GEMM per core instead of one GEMM on all cores, and everything that is not a
GEMM (im2col, pooling, ReLU, the per-tap adds, Python itself while NumPy has released the GIL)
now runs on every core too. On the 2-core machine this makes a training step of the article's
network ~1.7x faster.

What threads cost: two shards of ResNet-20's 128 images took 246-284 ms a training step where
two processes, each training 64 images on one core at the same time, took 216-238 ms each
(one alone: 211-246 ms). The cores do not slow each other down; the shards do. Their kernel
calls took 387 ms a step in sum against the two processes' 332 ms, counting the wait to take
the GIL back after each, and each shard waited 10.7-13.7 ms a step at the BatchNormalization
barriers (measured in session 25, one-off scripts). Worker processes, which have a GIL each,
took 246-257 ms where these threads took 265-278 (``training.workers``).

One batch: a batch too small to split (under two shards of ``MIN_SHARD``) runs on this thread
with BLAS at one thread too, so ``set_threads`` is the only thing that decides how many cores
cnnlab uses. Left at two, OpenBLAS's second thread spins on a core between calls, waiting for
the next GEMM, while this thread runs everything else; on the 2-core virtual machine the
benchmarks run on, that put the article's training at batch 1 into phases 3.5-4x slower
(15-second runs, half-second windows: 83 of 150 windows at 5.7-6.4 ms a step against 1.5-2.2
with its second thread, 0 of 150 with one; with OpenBLAS told to stop spinning at once,
``OPENBLAS_THREAD_TIMEOUT=4``, 4 of 150). The second thread's GEMMs were worth little: at
batches 16 and 24 the median step was 8.5 and 9.7 ms with it and 5.4 and 7.1 without;
ResNet-20 at batches 2-24 moved under 5% either way. The one loss: the article's batch-1
prediction, 0.24-0.26 ms in a fast phase with it, 0.32-0.37 without (its second layer's GEMM
on one core), and 0.36-0.58 ms in its slow phases.

The arithmetic is the same as one big batch: a shard's loss gradient is scaled by its share of
the batch, so the summed gradients are those of the mean loss over the whole batch. Summation
order is fixed, so results repeat bit for bit for a given thread count.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from cnnlab import config

#: below this many samples per thread shard, splitting costs more than it saves (worker
#: processes have their own rule: ``workers.min_shard``). Measured on 2 cores,
#: one thread against two (ms a training step): the article's network 5.5 vs 7.2 at batch 16,
#: 8.2 vs 8.8 at 32, 11.0 vs 9.8 at 48; ResNet-20 78 vs 87 at 16, 143 vs 120 at 32. Small shards
#: run many small ops, and two threads doing that hand the GIL to each other after every one
#: (a toy: 10 NumPy ops of 2 us between barriers took 100 us a round on two threads, 20 us on
#: one); each shard also waits at every BatchNormalization for the other's sums.
MIN_SHARD = 16

_executor: ThreadPoolExecutor | None = None
_workers = 0                                   # its size
_blas = None


def shard_slices(n: int, min_shard: int = MIN_SHARD) -> list[slice] | None:
    """Contiguous, near-equal slices of ``range(n)``, one per thread, each of at least
    ``min_shard``; None: don't split."""
    count = min(config.threads(), n // min_shard)
    if count < 2:
        return None
    size, extra = divmod(n, count)
    bounds, start = [], 0
    for i in range(count):
        stop = start + size + (1 if i < extra else 0)
        bounds.append(slice(start, stop))
        start = stop
    return bounds


def single_threaded_blas():
    """A context that limits BLAS to one thread (threadpoolctl; selected once, ~3 us to enter)."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController
        _blas = ThreadpoolController().select(user_api="blas")
    return _blas.limit(limits=1)


def run_sharded(tasks, on_error=None):
    """Run zero-argument callables, one per thread (the first on this thread); return results
    in order. Exceptions propagate once every shard has ended, so none runs on behind an
    error; ``on_error`` runs first, so that shards waiting for the failed one (``BatchSums``)
    are released. (A shard left running behind an out-of-memory error went on compiling its
    first kernels. Numba records warnings process-wide while it types one, with
    ``warnings.catch_warnings``, which is not thread-safe; after it, the process's warnings
    went to a list of Numba's, its filter first in ``warnings.filters``. With an empty kernel
    cache, a test of the NaN loss's warning that ran after such a test failed 5 runs of 16,
    and none of 10 with this wait.)"""
    if on_error is not None:
        tasks = [_calling_on_error(task, on_error) for task in tasks]
    global _executor, _workers
    if _executor is None or _workers < len(tasks) - 1:
        if _executor is not None:      # CPython would also end its idle threads once collected
            _executor.shutdown(wait=False)
        _workers = max(len(tasks) - 1, 1)
        _executor = ThreadPoolExecutor(max_workers=_workers, thread_name_prefix="cnnlab-shard")
    with single_threaded_blas():
        futures = [_executor.submit(task) for task in tasks[1:]]
        try:
            first = tasks[0]()
        finally:
            wait(futures)
        return [first, *(f.result() for f in futures)]


def _calling_on_error(task, on_error):
    def run():
        try:
            return task()
        except BaseException:
            on_error()
            raise
    return run


class BatchSums:
    """Sums over a batch that is split over threads (and over MPI ranks): each shard passes its
    partial sum and every shard gets the same total, added in shard order, so the result does
    not depend on which thread came first. BatchNormalization's statistics go through this.

    One barrier a sum between threads (ResNet-20 makes 38 sums a training step): after it, each
    shard adds the parts itself, in the same order, so no second barrier hands out one shard's
    total. The parts alternate between two sets of slots: a shard can write sum k + 2's part
    only after every shard has reached sum k + 1's barrier, so after each has read sum k's
    parts. With MPI, one thread per rank exchanges the total and a second barrier hands it out,
    in slots that alternate the same way. (A batch in one piece sums over the ranks only:
    ``comm.sum_array``; in worker processes, ``workers.ShardProcesses.batch_sum``.)"""

    def __init__(self, count: int, comm=None):
        self.count, self.comm = count, comm
        self._barrier = threading.Barrier(count)
        self._parts: list = [[None] * count, [None] * count]
        self._totals: list = [None, None]
        self._calls = [0] * count                # sums each shard has asked for

    def for_shard(self, index: int):
        """The ``batch_sum`` function shard ``index`` calls."""
        return lambda partial: self._reduce(index, partial)

    def _reduce(self, index: int, partial: np.ndarray) -> np.ndarray:
        slot = self._calls[index] % 2
        self._calls[index] += 1
        parts = self._parts[slot]
        parts[index] = partial
        try:
            self._barrier.wait()
            total = parts[0].copy()
            for part in parts[1:]:
                total += part
            if self.comm is None:
                return total
            if index == 0:
                self._totals[slot] = self.comm.sum_array(total)
            self._barrier.wait()
        except threading.BrokenBarrierError:
            raise RuntimeError("Another shard of this batch failed; see its error.") from None
        return self._totals[slot]

    def abort(self) -> None:
        """A shard failed: release the others from their barrier."""
        self._barrier.abort()


#: the update is split over the threads only when each gets this many elements, and a
#: parameter is cut into row ranges only from this size. An update is memory-bound, roughly
#: 1 ns an element (five streams of 4 bytes, an estimate), and handing half to another thread
#: cost ~0.2 ms (the wait for it, in a profile of ResNet-20's split update at batch 1), so a
#: split pays from a few hundred thousand elements a thread. At 1 << 16, ResNet-20 (65
#: tensors, 0.27 M elements) split too: its update took 1.60-1.76 ms of a batch-1 step against
#: 1.28-1.31 ms on one thread (1.97-2.21 against 1.56-1.63 ms at batch 8; two runs each). The
#: article's 1.2 M Dense weights still split.
MIN_SPLIT_ELEMENTS = 1 << 19


def split_elementwise(work: list, count: int) -> list[list] | None:
    """``(param, grad, slots, *rest)`` items -> ``count`` groups, one per thread, with near-equal
    element counts, or None when one thread should do it all. Large parameters are cut into row
    ranges, one per group: views, so an in-place update of each piece updates the whole, bit for
    bit as if done at once (``rest``, the parameter's scalars, goes with each piece). Small ones
    go whole to the least loaded group.

    Only where the other threads' cores are idle: after a batch that ran in thread shards (BLAS
    held to one thread). After a product on BLAS's own threads, which spin for a while once it
    is done, or beside worker processes that poll for their next shard, a second thread finds
    its core taken. Measured on 2 cores, 1.2 M float32 SGD elements after a 2-thread GEMM:
    0.56 ms on one thread, 0.69 ms on two (16 M elements: 12.5 against 12.9 ms); with idle
    cores 0.71 against 0.57 ms (16 M: 12.5 against 6.9). The article's network's training
    steps, whose batches of 4, 8 and 16 run in one piece: 3.82-3.98, 4.96-5.01 and 6.54-6.76 ms
    with the update on two threads, 3.46-3.74, 4.48-4.83 and 6.16-6.43 ms on one (3 interleaved
    pairs of fresh processes each); at 32 and 128 (thread shards, two threads either way)
    unchanged: 9.87-10.42 against 9.86-10.18 ms, 21.54-21.87 against 21.22-21.58 ms."""
    if count < 2 or sum(item[0].size for item in work) < count * MIN_SPLIT_ELEMENTS:
        return None
    groups, loads = [[] for _ in range(count)], [0] * count
    for param, grad, slots, *rest in work:
        same_shape = all(getattr(s, "shape", None) == param.shape for s in slots.values())
        if param.size >= MIN_SPLIT_ELEMENTS and param.shape[0] >= count and same_shape:
            bounds = [param.shape[0] * i // count for i in range(count + 1)]
            for i, (start, stop) in enumerate(zip(bounds, bounds[1:])):
                rows = slice(start, stop)
                groups[i].append((param[rows], grad[rows],
                                  {name: s[rows] for name, s in slots.items()}, *rest))
                loads[i] += param[rows].size
        else:
            i = loads.index(min(loads))
            groups[i].append((param, grad, slots, *rest))
            loads[i] += param.size
    return groups
