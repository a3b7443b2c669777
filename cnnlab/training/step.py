"""One batch through a model: where a batch enters training.

    run_batch(model, xs, ys, training=True)  -> BatchResult(loss, losses, outputs, grads)

Forward through the graph (``graph.execute``), the losses, backward, all on one batch. The batch
is cut into shards over the cores (``training.parallel``) when that pays; each shard runs the same
model on its own tape: on threads of this process, or in training in worker processes forked
with the model (``training.workers``), bit for bit the same step. A shard's loss gradient is scaled by
its share of the batch, so the shards' gradients add up to those of the whole batch's mean loss
(over MPI ranks too: ``share`` is this rank's part of the global batch). Gradients are summed in
shard order, so a result repeats bit for bit for a given thread count.

BatchNormalization's batch statistics go through ``ctx.sum_over_batch``: summed over the shards
and, with ``sync_batch_norm``, over the ranks, so every part normalises with the whole batch's.
Its moving statistics are updated once per batch, after the step.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from cnnlab.engine import arrays
from cnnlab.errors import OutOfMemoryError
from cnnlab.graph import execute, fusion
from cnnlab.layers.base import CallContext
from cnnlab.training import parallel, placement, workers


@dataclass
class BatchResult:
    loss: float                  # the weighted sum of the outputs' mean losses
    losses: list[float]          # each output's mean loss
    outputs: list[np.ndarray]    # what metrics read: logits where the softmax went into the
    #                              loss; NumPy arrays wherever the model runs
    grads: dict                  # {variable: gradient of the batch's mean loss}
    state_updates: list          # (variable, new value): BatchNormalization's moving statistics
    thread_shards: int = 1       # the threads of this process the batch ran on: their cores are
    #                              idle now, free for the update (``parallel.split_elementwise``)


def random_layers(model) -> list:
    """Every layer that draws random numbers in training (Dropout, augmentation), nested models
    included, in a fixed order."""
    return [layer for layer in model.leaf_layers() if hasattr(layer, "rng")]


def _shard_seeds(model, count: int) -> list[list[int] | None]:
    """Shard 0 draws from each layer's own generator; the others from generators seeded from it
    (one seed a random layer), drawn here on one thread in a fixed order, so a step repeats
    exactly."""
    layers = random_layers(model)
    if count == 1 or not layers:
        return [None] * count
    return [None] + [[int(layer.rng.integers(2**63)) for layer in layers]
                     for _ in range(count - 1)]


def _generators(model, seeds: list[int] | None) -> dict | None:
    return None if seeds is None else {layer: np.random.default_rng(seed)
                                       for layer, seed in zip(random_layers(model), seeds)}


def _losses(model, outputs, ys, as_logits, share, want_grads):
    """Each output's mean loss and, when wanted, the gradient of ``share * sum_i w_i L_i``."""
    losses, grads = [], []
    for index, (loss, weight, out, y) in enumerate(zip(model.compiled_losses,
                                                       model.loss_weights, outputs, ys)):
        if loss is None:
            losses.append(0.0)
            grads.append(None)
            continue
        logits = loss.from_logits or index in as_logits
        value, cache = (loss.forward_logits if logits else loss.forward)(out, y)
        losses.append(float(value))
        if want_grads:
            grad = (loss.backward_logits if logits else loss.backward)(cache)
            scale = weight * share
            grads.append(grad * grad.dtype.type(scale) if scale != 1.0 else grad)
    return losses, grads


def _shard_pass(model, xs, ys, ctx, share, want_grads):
    candidates = [i for i, loss in enumerate(model.compiled_losses)
                  if loss is not None and loss.fuses_softmax and not loss.from_logits]
    activations, as_logits = fusion.plan(model, candidates)
    outputs, tape = execute.forward(model, xs, ctx, activations, **_op_fusions(
        model, activations, inference=not ctx.training and not ctx.keep_cache))
    losses, output_grads = _losses(model, outputs, ys, as_logits, share, want_grads)
    grads = execute.backward(model, tape, output_grads).params if want_grads else {}
    return losses, outputs, grads


def _op_fusions(model, activations: dict, inference: bool) -> dict:
    """``execute.forward``'s ``folds``, ``joins``, ``pools`` and ``chains`` (``graph.fusion``):
    the pooled convolution always, the others only where no backward pass follows."""
    plan = {"pools": fusion.pooled_convs(model, activations)}
    if inference:
        plan["folds"] = fusion.batch_norm_folds(model, activations)
        plan["joins"] = fusion.residual_joins(model, activations, plan["folds"])
        plan["chains"] = fusion.separable_chains(model, activations, plan["folds"],
                                                 {**plan["joins"], **plan["pools"]})
    return plan


def _context(model, training, batch_sum=None, generators=None, keep_cache=None) -> CallContext:
    ctx = CallContext(training, keep_cache, batch_sum=batch_sum, generators=generators)
    ctx.workspaces = model.workspaces
    return ctx


def _on_model_device(model, xs, ys, gradients: bool):
    """The batch on the model's device, its shards over the cores (None: one piece; always on
    a GPU, where the device's own parallelism does the work), and whether they run in worker
    processes (``training.workers``) rather than threads. Workers split by their own rule
    (``workers.min_shard``), smaller batches than threads do; where it does not split a batch,
    the threads' rule does, the shards going to the workers all the same unless the batch has
    ``gradients`` (the copies of which the workers' rule weighs)."""
    device = placement.device_of(model)
    if device != "cpu":
        return placement.batch_to(xs, device), placement.batch_to(ys, device), None, False
    n = len(xs[0])
    in_processes = workers.usable() and workers.packable([*xs, *ys])
    if in_processes:
        parts = parallel.shard_slices(n, workers.min_shard(model))
        if parts is not None:
            return xs, ys, parts, True
        in_processes = not gradients
    return xs, ys, parallel.shard_slices(n), in_processes


def _out_of_memory(model, images: int, what: str, exc: MemoryError) -> OutOfMemoryError:
    """A MemoryError from a batch (NumPy's, or CuPy's ``cuda.memory.OutOfMemoryError``, one
    too) as cnnlab's: where, in what, at what batch size, and the one to try. Nothing has
    changed yet: the update comes after the batch's forward and backward passes."""
    where = "the GPU" if placement.device_of(model) == "gpu" else "this machine"
    if images > 1:
        hint = (f"Try a batch of {images // 2}: batch_size={images // 2} in fit, evaluate and "
                f"predict, --batch-size {images // 2} on the command line.")
    else:
        hint = (f"Even one image does not fit: the model or its input is too large for {where}"
                + (" (device cpu runs it in this machine's memory)." if where == "the GPU"
                   else "."))
    return OutOfMemoryError(f"Out of memory on {where} in {what} at a batch of {images} "
                            f"({type(exc).__name__}: {exc}). {hint}")


def run_batch(model, xs: list[np.ndarray], ys: list, training: bool, share: float = 1.0,
              comm=None, want_grads: bool | None = None) -> BatchResult:
    """Forward (and in training, backward) over one batch, on every core that pays. ``comm``:
    the MPI communicator BatchNormalization sums its statistics over (None: this process's
    batch only). ``want_grads`` defaults to ``training``. Out of memory is an ``OutOfMemoryError``
    that names the batch size to try."""
    try:                                  # costs nothing until something is raised
        return _run_batch(model, xs, ys, training, share, comm, want_grads)
    except OutOfMemoryError:
        raise
    except MemoryError as exc:
        raise _out_of_memory(model, len(xs[0]), "training" if training else "evaluation",
                             exc) from exc


def _run_batch(model, xs, ys, training, share, comm, want_grads) -> BatchResult:
    want_grads = training if want_grads is None else want_grads
    n = len(xs[0])
    xs, ys, parts, in_processes = _on_model_device(model, xs, ys, training and want_grads)
    thread_shards = 1
    if parts is None:
        batch_sum = comm.sum_array if training and comm is not None else None   # ranks only
        ctx = _context(model, training, batch_sum, None, want_grads)
        with parallel.single_threaded_blas():           # why: ``parallel``, "One batch"
            results, parts = [_shard_pass(model, xs, ys, ctx, share, want_grads)], [slice(0, n)]
    else:
        shares = [share * (p.stop - p.start) / n for p in parts]
        seeds = _shard_seeds(model, len(parts)) if training else [None] * len(parts)
        pieces = [([x[p] for x in xs], [y[p] for y in ys]) for p in parts]
        with workers.claimed(in_processes) as claimed:   # not while another thread has them
            pool = workers.pool_for(model, pieces, _run_shard) if claimed else None
            if pool is not None:
                results, ctx = _in_processes(model, pool, pieces, shares, seeds, comm, training,
                                             want_grads)
            else:
                results, ctx = _in_threads(model, pieces, shares, seeds, comm, training,
                                           want_grads)
                thread_shards = len(results)
    weights = [(p.stop - p.start) / n for p in parts]
    losses = [sum(r[0][i] * w for r, w in zip(results, weights))
              for i in range(len(model.outputs))]
    outputs = [np.concatenate([r[1][i] for r in results]) if len(results) > 1
               else arrays.to_host(results[0][1][i]) for i in range(len(model.outputs))]
    grads = dict(results[0][2])
    for _, _, shard_grads in results[1:]:                   # shard order: repeatable sums
        for variable, grad in shard_grads.items():
            if variable in grads:
                # in place: every gradient array is a fresh result of this step's backward
                grads[variable] = np.add(grads[variable], grad, out=grads[variable]) \
                    if grads[variable].flags.writeable else grads[variable] + grad
            else:
                grads[variable] = grad.copy()     # a worker's is reused by its next step
    total = sum(w * loss for w, loss, fn in zip(model.loss_weights, losses, model.compiled_losses)
                if fn is not None)
    # shard 0's statistics updates: every shard computed the same whole-batch statistics
    return BatchResult(float(total), losses, outputs, grads, ctx.state_updates, thread_shards)


def _in_threads(model, pieces, shares, seeds, comm, training, want_grads):
    """Every shard on a thread of this process; shard 0's context."""
    sums = parallel.BatchSums(len(pieces), comm) if training else None
    contexts = [_context(model, training, sums.for_shard(k) if sums else None,
                         _generators(model, seeds[k]), want_grads) for k in range(len(pieces))]
    results = parallel.run_sharded(
        [functools.partial(_shard_pass, model, xs, ys, ctx, share, want_grads)
         for ctx, (xs, ys), share in zip(contexts, pieces, shares)],
        on_error=sums.abort if sums else None)
    return results, contexts[0]


def _in_processes(model, pool, pieces, shares, seeds, comm, training, want_grads):
    """Shard 0 here, the others in ``pool``'s worker processes (``training.workers``); shard
    0's context."""
    batch_sum = functools.partial(pool.batch_sum, comm=comm) if training else None
    ctx = _context(model, training, batch_sum, None, want_grads)
    headers = [{"pass": "batch", "training": training, "want_grads": want_grads, "share": share,
                "seeds": seed} for share, seed in zip(shares[1:], seeds[1:])]
    return _with_workers(pool, pieces, headers, functools.partial(
        _shard_pass, model, *pieces[0], ctx, shares[0], want_grads)), ctx


def _with_workers(pool, pieces, headers, first_shard) -> list:
    """Every shard's result: shard 0's by ``first_shard()`` here, the others' from ``pool``'s
    workers. A failure anywhere stops the workers: they may be halfway through the batch."""
    try:
        pool.start(pieces[1:], headers)
        with parallel.single_threaded_blas():         # the workers have the other cores
            first = first_shard()
        return [first, *pool.finish()]
    except BaseException:
        workers.close()
        raise


def _run_shard(model, xs, ys, batch_sum, header):
    """One shard of a worker process, or shard 0 of a prediction, as the header asks
    (``_in_processes``, ``_predict_batch``): its losses, outputs and gradients."""
    if header["pass"] == "predict":
        return [], _predict_pass(model, xs), {}
    training, want_grads = header["training"], header["want_grads"]
    ctx = _context(model, training, batch_sum if training else None,
                   _generators(model, header["seeds"]), want_grads)
    return _shard_pass(model, xs, ys, ctx, header["share"], want_grads)


def predict_batch(model, xs: list[np.ndarray]) -> list[np.ndarray]:
    """The model's outputs (probabilities, not logits), on every core that pays."""
    try:
        return _predict_batch(model, xs)
    except MemoryError as exc:
        raise _out_of_memory(model, len(xs[0]), "prediction", exc) from exc


def _predict_batch(model, xs):
    xs, _, parts, in_processes = _on_model_device(model, xs, [], False)
    if parts is None:
        with parallel.single_threaded_blas():           # why: ``parallel``, "One batch"
            return [arrays.to_host(output) for output in _predict_pass(model, xs)]
    pieces = [([x[p] for x in xs], []) for p in parts]
    with workers.claimed(in_processes) as claimed:       # not while another thread has them
        pool = workers.pool_for(model, pieces, _run_shard) if claimed else None
        if pool is not None:
            results = [outputs for _, outputs, _ in _with_workers(
                pool, pieces, [{"pass": "predict"}] * (len(pieces) - 1),
                functools.partial(_run_shard, model, pieces[0][0], [], None,
                                  {"pass": "predict"}))]
        else:                                  # threads: one plan for them all
            plan = _inference_plan(model)
            results = parallel.run_sharded([functools.partial(_predict_pass, model, piece, plan)
                                            for piece, _ in pieces])
    return [np.concatenate([r[i] for r in results]) for i in range(len(model.outputs))]


def _predict_pass(model, xs, plan=None) -> list:
    """The model's outputs for one shard, at inference, by ``plan`` (:func:`_inference_plan`;
    None: made here, as each worker process makes its own)."""
    activations, fusions = plan or _inference_plan(model)
    return execute.forward(model, xs, _context(model, False), activations, **fusions)[0]


def _inference_plan(model) -> tuple[dict, dict]:
    """``(activations, fusions)``: every fusion ``graph.fusion`` has, for an inference call.
    80-120 us on mobilenet_small and ResNet-20, made once a call, not once a thread shard."""
    activations, _ = fusion.plan(model)
    return activations, _op_fusions(model, activations, inference=True)


def apply_update(model, result: BatchResult) -> None:
    """One optimizer step over every trainable parameter that has a gradient, by name, on the
    threads the batch ran on; then the state the forward pass asked to change (moving
    statistics)."""
    model.optimizer.apply([(name, variable.value, result.grads[variable])
                           for name, variable in model.named_trainable_params()
                           if variable in result.grads], threads=result.thread_shards)
    for variable, value in result.state_updates:
        variable.apply_update(value)
