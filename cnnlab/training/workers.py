"""A batch's shards in processes of their own: this process runs shard 0, and one forked worker
process per further shard runs the same model on its part, in training, evaluation and
prediction alike.

Why not threads: two thread shards of ResNet-20's 128 images took 247-248 ms a training step
where two MPI ranks of 64 images each, exchanging BatchNormalization's sums and the gradients,
took 219-229 ms (mobilenet_small 265-281 against 227-231 ms, cifar10_cnn 81-84 against 79-80,
the article's network 22.1-24.1 against 21.5-22.2; 2 cores, two runs each, session 26). Every
kernel call of a thread shard releases the GIL and must take it back, ~1,000 times a step, and
waits whenever the other shard is running Python (``training.parallel``'s docstring has the
measurements). Processes have a GIL each. Built, they took 246-257 ms a step where threads
took 265-278 (ResNet-20 at batch 128, 4 interleaved pairs), mobilenet_small 253-279 against
292-322, cifar10_cnn 92-93 against 94-97. Prediction gains most where a network makes many
short kernel calls: mobilenet_small predicting 128 images, whose chains of convolutions run a
few images at a time (``engine.chain``), took 26.4-26.8 ms where threads took 27.6-27.8 (3
interleaved pairs, medians of 60 calls; its shard 0 alone 25.6 ms of that, handing the other
shard over and taking its outputs back 0.3 ms), and 7.7-9.7 against 9.6-10.7 ms at batch 32;
cifar10_cnn at 128, 19.3-23.2 against 21.8-25.5; ResNet-20 and the article's network were
level (session 39). Smaller batches gain more (below).

How a step goes, for shard k > 0:
- The model's variables live in one shared memory block (``_SharedVariables``): the parent's
  ``Variable.value`` arrays are views into it, and the worker, forked after they were, sees
  every update the optimizer makes in place. A value replaced by a new array (``set_weights``,
  a load) is copied back in before the next step.
- The parent writes the shard's inputs and targets into the worker's own block and sends a
  header (JSON: offsets, shapes, dtypes, the shard's share of the loss, its random seeds).
- BatchNormalization's partial sums go to the parent over a pipe; the parent adds every
  shard's part in shard order, as the thread shards do (and sums over MPI ranks when asked),
  and sends the total back. So the results are those of the same shards on threads, bit for
  bit.
- The worker writes its gradients into its block and sends its losses and outputs; the parent
  adds the gradients to its own in shard order.

When: a training step on the CPU whose shards each have ``min_shard(model)`` samples, the
fewest for which a worker pays for its copies and messages. ResNet-20's shards may be as small
as 2 images, mobilenet_small's 4; below that, and for a network of few multiply-adds per
parameter (the article's: 67 images), the thread shards' rule applies
(``parallel.MIN_SHARD``). Small batches gain most, since threads are not worth splitting them:
ResNet-20 at batch 16 went from 65-67 ms a step (unsplit) to 48-52 ms, mobilenet_small from
65-71 to 43-44 ms. Evaluation and prediction split by the same rule, and where it does not
split a batch, by the thread shards' rule, still in workers (they copy no gradients). Where
both rules make the same shards (on two threads, every batch of 32 images or more), workers
and threads give the same outputs bit for bit; elsewhere, equal to rounding. The workers split
small batches that threads leave whole: mobilenet_small predicting 8 images took 2.88 ms
against 4.00-4.14 unsplit, 16 images 4.55-4.69 against 7.38-7.43, and ResNet-20 16 images
5.91-6.75 against 8.98-9.25 (2 interleaved pairs each, medians of 300 calls; session 39).

Nothing is pickled: headers are JSON, arrays are raw bytes. The workers are forked, so they
start as copies of this process (no import, no model file), and are forked again when the
model, its compiled losses, which parameters train, the variables' shapes or the kernels change
(``_fingerprint``), or a batch needs more room. One set of workers exists at a time, the main
thread's (``usable``; a model trained or used on another thread runs its shards on threads). A worker
that fails sends its traceback; one that dies is noticed at the next wait; either way the
step raises and the workers are stopped. A worker whose parent dies reads the end of its pipe
and exits. Between batches the workers wait on their pipes, holding their memory, until their
model is collected, ``fit`` ends, another model needs them or ``close()``: a model that
predicts batch after batch forks once. Where the platform cannot fork safely (not Linux), in
an MPI run (Open MPI does not support fork), off the main thread (``usable``) or with
``config.set_shards("threads")``, the shards run as threads. From
Python 3.12, forking a process that has threads (BLAS starts its own at import) issues a
``DeprecationWarning``, as PyTorch's data loader workers do; ``set_shards("threads")`` is the
way to a run without it. Where forking fails (that warning made an error, no processes left),
cnnlab says so once and runs its shards on threads from then on.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import multiprocessing
import multiprocessing.connection
import signal
import sys
import threading
import time
import traceback
import warnings
import weakref

import numpy as np

from cnnlab import config

_ALIGN = 64                                    # every array starts on a cache line

_pool: ShardProcesses | None = None
_in_use = threading.RLock()                    # held by the thread whose step uses ``_pool``
_fork_refused: str | None = None      # why forking failed once in this process: threads since


def usable() -> bool:
    """Whether a batch's shards may run as processes here and now: on the main thread only. A
    fork waits in OpenBLAS's fork handler for any BLAS call in flight, and one whose threads
    are busy never ends: the web app hung for good when one request thread forked to predict
    while another was inside a threaded GEMM (the inside page, session 39). Servers and
    background jobs run their batches on threads; a script, a notebook or the command line
    on its main thread."""
    return (config.shards() == "processes" and sys.platform.startswith("linux")
            and threading.current_thread() is threading.main_thread()
            and "mpi4py.MPI" not in sys.modules and _fork_refused is None)


#: a worker process pays for itself when its shard's forward pass makes this many multiply-adds
#: per parameter of the model, or more. What a worker adds to a step grows with the parameters
#: (its gradients are copied into shared memory and added to the parent's) and with the
#: messages (one a BatchNormalization sum); what it saves grows with its share of the work.
#: Measured on 2 cores (ms a training step, fresh processes): ResNet-20 (41 M multiply-adds an
#: image, 0.27 M parameters) at batch 16, 65-67 unsplit against 48-52 in two worker shards of
#: 8 (1,190 a parameter); at batch 4, 23.7-25.6 against 20.5-21.4 in shards of 2 (298, with
#: ``SPIN_SECONDS``); mobilenet_small (17.6 M, 0.21 M) at batch 8, 26.3-26.9 against
#: 20.8-21.2 in shards of 4 (336); the article's network (4.8 M, 1.09 M) at batch 128,
#: 23.2-24.5 in thread shards against 24.3-24.6 in worker shards of 64 (280), and at batch 16,
#: 7.0-7.4 unsplit against 7.8-7.9 in shards of 8; cifar10_cnn (20.7 M, 1.25 M) at 128, 94-97
#: on threads against 92-93 (1,060).
MIN_MULTIPLY_ADDS_PER_PARAMETER = 290

_min_shards: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def min_shard(model) -> int:
    """The fewest samples a shard of ``model``'s batches needs for a worker process to pay
    (``MIN_MULTIPLY_ADDS_PER_PARAMETER``); counted once a model."""
    if model not in _min_shards:
        parameters = sum(v.value.size for v in model.params)
        _min_shards[model] = max(1, -(-MIN_MULTIPLY_ADDS_PER_PARAMETER * parameters
                                      // max(_forward_multiply_adds(model), 1)))
    return _min_shards[model]


def _forward_multiply_adds(model) -> int:
    """One sample's multiply-adds in the forward pass, roughly: every weight of two or more
    axes (a kernel) is used once at each position of its layer's output."""
    total = 0
    for node in model.nodes:
        layer = node.layer
        if hasattr(layer, "nodes"):                        # a model used as a layer
            total += _forward_multiply_adds(layer)
            continue
        positions = int(np.prod(node.outputs[0].shape[1:-1], dtype=np.int64))
        total += positions * sum(v.value.size for v in layer.params if v.value.ndim >= 2)
    return total


def pool_for(model, pieces: list, run_shard) -> ShardProcesses | None:
    """The worker processes for ``model``'s steps in these ``(xs, ys)`` pieces, one a shard
    (the first is this process's), with room for the largest; forked anew when what they
    copied has changed. None when they cannot be forked (then ``usable()`` stays False).
    ``run_shard(model, xs, ys, batch_sum, header) -> (losses, outputs, grads)`` is what a
    worker runs on its shard, ``header`` being what :meth:`ShardProcesses.start` sent it
    (``training.step``'s: passed in, to keep this module below it)."""
    global _pool, _fork_refused
    fingerprint = _fingerprint(model, len(pieces))
    room = max(_layout([*xs, *ys])[1] for xs, ys in pieces[1:])
    if _pool is not None and not _pool.serves(model, fingerprint, room):
        close()
    if _pool is None:
        try:
            _pool = ShardProcesses(model, len(pieces), fingerprint, 2 * room, run_shard)
        except (OSError, Warning) as exc:
            # no fork to be had (out of processes or memory), or a warning made an error
            # (Python 3.12's about forking a process that has threads): threads, from now on
            _fork_refused = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"cnnlab could not start its shard worker processes ({_fork_refused});"
                          f" it runs its shards on threads instead, with the same results "
                          f"and somewhat slower.", RuntimeWarning, stacklevel=4)
            return None
    return _pool


@contextlib.contextmanager
def claimed(wanted: bool = True):
    """Whether this thread may use the worker processes for one step: not while another
    thread has them (``close`` from a model's finalizer, which may run on any thread); the
    shards then run as threads instead, on the same slices. (Only the main thread forks and
    uses them: ``usable``.)"""
    got = wanted and _in_use.acquire(blocking=False)
    try:
        yield got
    finally:
        if got:
            _in_use.release()


def close(model=None) -> None:
    """Stop the worker processes (the next step that wants them forks new ones), once no
    step is using them; with ``model``, only if they serve it."""
    if _pool is not None and (model is None or _pool.model_ref() is model):
        _close_pool(_pool)


def pids() -> list[int]:
    """The worker processes' ids (none when there are none)."""
    return [process.pid for process in _pool.processes] if _pool is not None else []


def _close_pool(pool: ShardProcesses) -> None:
    global _pool
    with _in_use:
        pool.close()
        if _pool is pool:
            _pool = None


def _fingerprint(model, count: int) -> tuple:
    """What a worker copied at its fork and uses in a step, that can change between steps. (A
    built model's variables cannot, nor their shapes: ``set_weights`` keeps them.) 34 us a step
    on ResNet-20 (best of 5 x 200 calls); listing every variable's shape too took 194 us
    (mean of 200)."""
    return (count, config.kernels(), config.floatx(), tuple(map(id, model.trainable_params)),
            tuple(map(id, model.compiled_losses)), tuple(model.loss_weights))


def _aligned(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


def _layout(arrays, start: int = 0) -> tuple[list, int]:
    """``[offset, shape, dtype]`` for each array (None stays None), packed from ``start``; and
    the end."""
    specs, offset = [], start
    for array in arrays:
        if array is None:
            specs.append(None)
            continue
        offset = _aligned(offset)
        specs.append([offset, list(array.shape), array.dtype.str])
        offset += array.nbytes
    return specs, offset


def _view(buffer, spec) -> np.ndarray | None:
    if spec is None:
        return None
    offset, shape, dtype = spec
    return np.ndarray(tuple(shape), np.dtype(dtype), buffer, offset)


def packable(arrays) -> bool:
    """Whether these arrays can travel as raw bytes (plain NumPy, no Python objects)."""
    return all(a is None or (type(a) is np.ndarray and not a.dtype.hasobject) for a in arrays)


class _SharedVariables:
    """Every variable's value in one shared block: the parent's ``Variable.value`` arrays are
    views into it, set before the workers fork, so they inherit the same views."""

    def __init__(self, variables):
        self.variables = list(variables)
        specs, size = _layout([v.value for v in self.variables])
        self.block = mmap.mmap(-1, max(size, 1))
        self.views = [_view(self.block, spec) for spec in specs]
        self.refresh()

    def refresh(self) -> None:
        """Point every variable at its view again, copying a value that was replaced."""
        for variable, view in zip(self.variables, self.views):
            if variable.value is not view:
                view[...] = variable.value
                variable.value = view


class ShardProcesses:
    """Worker processes for shards 1 .. count - 1 of one model's batches."""

    def __init__(self, model, count: int, fingerprint: tuple, arrays_bytes: int, run_shard):
        self.model_ref, self.fingerprint = weakref.ref(model), fingerprint
        self.shared = _SharedVariables(model.variables)
        self.trainable = [v for _, v in model.named_trainable_params()]
        self.grad_specs, grads_end = _layout([v.value for v in self.trainable])
        self.arrays_start = _aligned(grads_end)
        self.capacity = arrays_bytes
        self.links, self.processes, self.blocks = [], [], []
        self._finalizer = weakref.finalize(model, _close_pool, self)
        context = multiprocessing.get_context("fork")
        try:
            for index in range(1, count):
                block = mmap.mmap(-1, self.arrays_start + arrays_bytes)
                parent_end, child_end = context.Pipe()
                process = context.Process(     # forked: the arguments are not pickled
                    target=_serve, name=f"cnnlab-shard-{index}", daemon=True,
                    args=(self.model_ref, child_end, [*self.links, parent_end], block,
                          self.trainable, self.grad_specs, run_shard))
                process.start()
                child_end.close()
                self.links.append(parent_end)
                self.processes.append(process)
                self.blocks.append(block)
        except BaseException:
            self.close()
            raise

    def serves(self, model, fingerprint: tuple, arrays_bytes: int) -> bool:
        return (self.model_ref() is model and self.fingerprint == fingerprint
                and arrays_bytes <= self.capacity
                and all(process.is_alive() for process in self.processes))

    def close(self) -> None:
        """Close the pipes (each worker reads their end and exits); kill any that does not."""
        self._finalizer.detach()
        for link in self.links:
            link.close()
        for process in self.processes:
            process.join(timeout=2)
            if process.is_alive():
                process.kill()
                process.join()
        self.links, self.processes = [], []

    # --- the parent's side of a step ----------------------------------------------------------
    def start(self, shard_inputs: list, headers: list[dict]) -> None:
        """Hand shard k's ``(xs, ys)`` and header to worker k - 1."""
        self.shared.refresh()
        for link, block, (xs, ys), header in zip(self.links, self.blocks, shard_inputs, headers):
            xs_specs, end = _layout(xs, self.arrays_start)
            ys_specs, _ = _layout(ys, end)
            for array, spec in zip([*xs, *ys], [*xs_specs, *ys_specs]):
                if spec is not None:
                    _view(block, spec)[...] = array
            link.send_bytes(json.dumps({**header, "xs": xs_specs, "ys": ys_specs}).encode())

    def batch_sum(self, partial: np.ndarray, comm=None) -> np.ndarray:
        """Shard 0's ``batch_sum``: every worker's part added to this one in shard order (over
        MPI ranks too, with ``comm``), and the total sent to each."""
        total = partial.copy()
        for index in range(len(self.links)):
            total += np.frombuffer(self._receive(index, b"S"), partial.dtype).reshape(
                partial.shape)
        if comm is not None:
            total = comm.sum_array(total)
        payload = np.ascontiguousarray(total).tobytes()
        for link in self.links:
            link.send_bytes(payload)
        return total

    def finish(self) -> list[tuple]:
        """Each worker's ``(losses, outputs, grads)``, in shard order; the gradients are views
        into its block, valid until the next step."""
        results = []
        for index, block in enumerate(self.blocks):
            done = json.loads(self._receive(index, b"D"))
            outputs = [np.frombuffer(self._receive(index, b"O"), np.dtype(dtype)).reshape(shape)
                       for shape, dtype in done["outputs"]]
            grads = {variable: _view(block, spec) for variable, spec, has
                     in zip(self.trainable, self.grad_specs, done["grads"]) if has}
            results.append((done["losses"], outputs, grads))
        return results

    def _receive(self, index: int, kind: bytes) -> bytes:
        """Worker ``index``'s next message, which must be of ``kind``; its error or its death
        raised here."""
        link, process = self.links[index], self.processes[index]
        try:
            if not _spin(link):
                multiprocessing.connection.wait([link, process.sentinel])
            message = link.recv_bytes()
        except (EOFError, OSError):
            process.join(timeout=1)
            raise RuntimeError(f"The worker process of shard {index + 1} (pid {process.pid}) "
                               f"died (exit code {process.exitcode}) during a batch.") from None
        if message[:1] == b"E":
            raise RuntimeError(f"Shard {index + 1} of this batch failed in its worker process:\n"
                               f"{message[1:].decode(errors='replace')}")
        if message[:1] != kind:
            raise RuntimeError(f"The worker process of shard {index + 1} sent {message[:1]!r} "
                               f"where {kind!r} was due.")
        return message[1:]


#: how long a process waiting for the other side's message polls before it sleeps. A shard
#: waits at each BatchNormalization sum, and a process woken from sleep starts later than the
#: message arrives: ResNet-20 at batch 8 (worker shards of 4) took 38.1-38.5 ms a step without
#: polling, 32.6-33.1 ms with 300 us and 32.0-33.2 with 1 ms (100 us: 34.9-35.7); at batch 4
#: in shards of 2, 25.3-25.8 against 20.5-21.4 ms (unsplit: 23.7-25.6). At batch 128, 200 us
#: made no difference (3 pairs). The poll holds a core that its process would leave idle.
SPIN_SECONDS = 300e-6


def _spin(link) -> bool:
    """Poll ``link`` for up to ``SPIN_SECONDS``; whether a message came."""
    deadline = time.perf_counter() + SPIN_SECONDS
    while time.perf_counter() < deadline:
        if link.poll():
            return True
    return False


# --- the worker's side ------------------------------------------------------------------------
def _serve(model_ref, link, inherited, block, trainable, grad_specs, run_shard) -> None:
    """A worker's loop: one header, one shard, one reply, until the parent closes the pipe."""
    model = model_ref()                  # this process's copy, alive: the parent's was at fork
    for other in inherited:              # other pipes' parent ends: EOF must reach their workers
        other.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)          # Ctrl-C is the parent's to handle
    config.set_threads(1)
    from threadpoolctl import threadpool_limits
    threadpool_limits(limits=1, user_api="blas")           # this process's BLAS: one core

    def batch_sum(partial: np.ndarray) -> np.ndarray:
        link.send_bytes(b"S" + np.ascontiguousarray(partial).tobytes())
        _spin(link)
        return np.frombuffer(link.recv_bytes(), partial.dtype).reshape(partial.shape).copy()

    while True:
        try:
            header = json.loads(link.recv_bytes())
        except (EOFError, OSError):
            return
        try:
            xs = [_view(block, spec) for spec in header["xs"]]
            ys = [_view(block, spec) for spec in header["ys"]]
            losses, outputs, grads = run_shard(model, xs, ys, batch_sum, header)
            has = []
            for variable, spec in zip(trainable, grad_specs):
                grad = grads.get(variable)
                has.append(grad is not None)
                if grad is not None:
                    _view(block, spec)[...] = grad
            outputs = [np.ascontiguousarray(output) for output in outputs]
            link.send_bytes(b"D" + json.dumps({
                "losses": losses, "grads": has,
                "outputs": [[list(o.shape), o.dtype.str] for o in outputs]}).encode())
            for output in outputs:
                link.send_bytes(b"O" + output.tobytes())
        except (EOFError, BrokenPipeError):
            return
        except BaseException:
            try:
                link.send_bytes(b"E" + traceback.format_exc().encode())
            except OSError:
                pass
            return
