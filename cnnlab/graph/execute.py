"""Running a graph: the forward pass leaves a tape, the backward pass walks it in reverse.

    forward(graph, inputs, ctx, activations)  -> (outputs, tape)
    backward(graph, tape, output_grads)       -> Gradients (inputs, parameters, asked tensors)

The tape is a list of ``(node, cache)`` in the order the nodes ran: everything backward needs,
owned by this call alone. Backward sums gradients wherever a tensor feeds several nodes and
wherever one layer (shared weights) was called more than once: a gradient is added up in a dict
keyed by tensor, and a parameter's in a dict keyed by its variable.

``activations`` overrides a node's activation for this call: the graph's fusions
(``graph.fusion``) move a ReLU past max pooling or leave a softmax to the loss; the layer
records what it ran in its cache, so backward undoes exactly that.
"""

from __future__ import annotations

import threading

import numpy as np

from cnnlab.engine.arrays import FreeList, unshared
from cnnlab.errors import ShapeError
from cnnlab.layers.base import CallContext


class Tape(list):
    """``(node, cache)`` per node run, in order; ``values`` keeps every tensor's value when the
    forward pass was asked to (feature maps, Grad-CAM)."""

    def __init__(self):
        super().__init__()
        self.values: dict[int, np.ndarray] = {}
        self.needed: set[int] | None = None     # the forward's needs_gradient, for backward


class Gradients:
    """What one backward pass found: ``inputs`` (a list, None where not asked), ``params``
    ({variable: gradient}) and ``tensors`` ({id(tensor): gradient} for the tensors asked for)."""

    def __init__(self, inputs, params, tensors):
        self.inputs, self.params, self.tensors = inputs, params, tensors


class Workspaces(threading.local):
    """Scratch buffers (im2col columns, kernel spectra) kept between calls, per thread and per
    call site: two threads, or two calls of one layer in a graph, never share a buffer. And
    per thread, the free list that forward passes take their outputs and scratch from
    (``CallContext.free_list``); each top-level forward pass starts a pass of it, which
    bounds what it keeps."""

    def __init__(self):
        self.by_site: dict[tuple, dict] = {}
        self.free_list = FreeList()

    def site(self, key: tuple) -> dict:
        return self.by_site.setdefault(key, {})


def _add(total: dict, key, grad: np.ndarray) -> None:
    """Accumulate without touching an array some cache may still hold: in place only into an
    array that owns its memory and that nothing but ``total`` refers to (``arrays.unshared``).
    A residual block's input is the usual case: its shortcut's gradient is the Add's, which
    the branch has read by the time the branch's own gradient arrives. In place, the sum costs
    no new map-sized array (PyTorch's autograd accumulates the same way, by its tensors' use
    counts)."""
    held = total.get(key)
    if held is None:
        total[key] = grad
    elif held.shape == grad.shape and held.dtype == np.result_type(held, grad) \
            and unshared(held):
        np.add(held, grad, out=held)
    else:
        total[key] = held + grad


#: the cache of a node whose op ran inside the node before it (``forward``'s ``pools``): its
#: output is its input's value, so its gradient is its input's
PASSED_ON = "passed on"


def _node_backward(node, cache, grads: dict, params: dict, needed, wanted_ids) -> None:
    """One node's backward pass: its output gradients taken from ``grads``, its input gradients
    added into ``grads`` and its parameters' into ``params``. A function of its own, so that no
    name outlives it holding a gradient array (``_owned`` counts the references)."""
    outs = [grads.get(id(t)) if id(t) in wanted_ids else grads.pop(id(t), None)
            for t in node.outputs]
    if all(g is None for g in outs):
        return
    if cache is PASSED_ON:
        if id(node.inbound[0]) in needed:
            _add(grads, id(node.inbound[0]), outs[0])
        return
    layer = node.layer
    input_grad = any(id(t) in needed for t in node.inbound)
    trainable = layer.trainable_params
    if not input_grad and not trainable:
        return
    owned = _owned(outs)                    # before a call's argument adds a reference
    in_grads, param_grads = layer.backward(outs[0] if len(outs) == 1 else outs, cache,
                                           input_grad, grad_owned=owned)
    if trainable:
        keep = {id(v) for v in trainable}
        for variable, grad in zip(layer.params, param_grads):
            if grad is not None and id(variable) in keep:
                _add(params, variable, grad)
    if input_grad:
        in_grads = in_grads if layer.input_count != 1 else [in_grads]
        for tensor, grad in zip(node.inbound, in_grads):
            if grad is not None and id(tensor) in needed:
                _add(grads, id(tensor), grad)


def _owned(outs: list) -> bool:
    """Whether a node's one output gradient is an array that ``outs`` alone holds and that owns
    its memory: its backward pass may then write its own input gradient into it (a layer with
    ``writes_into_grad``), instead of into a new array. Not a gradient that another tensor's
    entry still holds (a join hands one array to each of its inputs), one the caller passed
    in, one a ``wanted`` tensor keeps, nor a view."""
    if len(outs) != 1:
        return False
    grad = outs[0]
    return unshared(grad)


class Step:
    """One node as the forward pass runs it, worked out once per graph: which values it reads,
    which it writes, which it is the last reader of (they can be dropped after it), and the key
    of its scratch buffers."""

    __slots__ = ("node", "layer", "reads", "writes", "last_reads", "site", "one_input",
                 "training")

    def __init__(self, node, last_reads):
        self.node, self.layer = node, node.layer
        self.reads = [id(t) for t in node.inbound]
        self.writes = [id(t) for t in node.outputs]
        self.last_reads = last_reads
        self.site = (id(node),)
        self.one_input = node.layer.input_count == 1
        self.training = node.training          # None: the call's mode


def plan_steps(nodes, outputs) -> list[Step]:
    """The steps of a graph's nodes in order; an output's value is kept to the end."""
    last_reader = {}
    for node in nodes:
        for tensor in node.inbound:
            last_reader[id(tensor)] = node
    kept = {id(t) for t in outputs}
    return [Step(node, [key for key in dict.fromkeys(id(t) for t in node.inbound)
                        if last_reader[key] is node and key not in kept])
            for node in nodes]


def forward(graph, inputs: list[np.ndarray], ctx: CallContext, activations: dict | None = None,
            keep_values: bool = False, folds: dict | None = None,
            joins: dict | None = None, pools: dict | None = None,
            chains: dict | None = None) -> tuple[list[np.ndarray], Tape]:
    """Run every node of ``graph`` in topological order on ``inputs`` (one array per graph
    input). Values no later node needs are dropped at once unless ``keep_values``. ``folds``
    (inference only, ``fusion.batch_norm_folds``): {op node: BatchNormalization node} whose BN
    runs inside the op's weights; the BN node passes its input on. ``joins`` (inference only,
    ``fusion.residual_joins``): {op node: Join} whose Add the op runs in its last pass; the Add
    node passes the op's result on. ``pools`` (``fusion.pooled_convs``): {conv node: max pool
    node} whose pooling the conv runs; the pool node passes the pooled map on, and in a
    backward pass its gradient back (:data:`PASSED_ON`). ``chains`` (inference only,
    ``fusion.separable_chains``): {a chain's first conv node: its Links} whose ops the node's
    layer runs after its own; their nodes and the nodes between pass their input, the chain's
    result, on."""
    activations = activations or {}
    folds, joins, pools, chains = folds or {}, joins or {}, pools or {}, chains or {}
    folded = {id(bn) for bn in folds.values()}
    folded.update(id(node) for links in chains.values() for link in links
                  for node in (*link.between, link.node))
    passed_on = {id(join.add): id(join.joined) for join in joins.values()}
    passed_on.update((id(pool), id(conv.outputs[0])) for conv, pool in pools.items())
    for tensor, x in zip(graph.inputs, inputs):
        if x.shape[1:] != tensor.shape[1:]:
            raise ShapeError(f"Model {graph.name!r}: input {tensor.name!r} expects (N, "
                             f"{', '.join(map(str, tensor.shape[1:]))}); received {x.shape}.")
    scope, sites = ctx.scope, ctx.workspaces
    if sites is not None and not scope:
        sites.free_list.start_pass()              # a top-level pass
    # which nodes' inputs a backward pass will want gradients of (not the graph's own inputs,
    # unless asked later: the choice only tunes speed, every path computes every gradient)
    needed = needs_gradient(graph) if ctx.keep_cache else None
    outer_gradients, outer_training = ctx.gradients, ctx.training
    values = {id(t): x for t, x in zip(graph.inputs, inputs)}
    tape = Tape()
    tape.needed = needed
    for step in graph.steps:
        args = [values[key] for key in step.reads]
        ctx.scope = scope + step.site if scope else step.site   # a nested model's nodes: under it
        ctx.workspace = None if sites is None else sites.site(ctx.scope)
        ctx.training = outer_training if step.training is None else step.training
        if id(step.node) in folded:                     # already applied by the op before it
            out, cache = args[0], None
        elif id(step.node) in passed_on:     # the op before it added its inputs, or pooled
            out, cache = values[passed_on[id(step.node)]], PASSED_ON
        else:
            if needed is not None and outer_gradients != "none":
                ctx.gradients = "all" if any(key in needed for key in step.reads) else "kernel"
            bn, join, pool = folds.get(step.node), joins.get(step.node), pools.get(step.node)
            chain = chains.get(step.node)
            ctx.output_affine = _folded_affine(bn, args[0].dtype)
            ctx.output_residual = None if join is None else values[id(join.residual)]
            activation = activations.get(step.node if bn is None else bn)
            if join is not None:
                activation = activations.get(join.add, join.add.layer.activation)
            if pool is not None:
                ctx.output_pool = pool.layer.pool_size
                activation = activations.get(pool, pool.layer.activation)
            if chain is not None:                            # the linked nodes' own
                ctx.output_chain = tuple(
                    (link.node.layer, _folded_affine(folds.get(link.node), args[0].dtype),
                     link.relu) for link in chain)
            out, cache = step.layer.forward(args[0] if step.one_input else args, ctx, activation)
            ctx.output_affine = ctx.output_residual = ctx.output_pool = None
            ctx.output_chain = None
        if len(step.writes) == 1:
            values[step.writes[0]] = out
        else:
            values.update(zip(step.writes, out))
        if ctx.keep_cache:
            tape.append((step.node, cache))
        if not keep_values:
            for key in step.last_reads:
                del values[key]
    ctx.scope, ctx.gradients, ctx.training = scope, outer_gradients, outer_training
    if keep_values:
        tape.values = values
    return [values[id(t)] for t in graph.outputs], tape


def _folded_affine(bn, dtype):
    """``(scale, shift)`` of a BatchNormalization node folded into the op before it, or None."""
    return None if bn is None else bn.layer.inference_affine(bn.outputs[0].shape[-1], dtype)


def needs_gradient(graph, want_inputs: bool = False, wanted=()) -> set[int]:
    """Ids of the tensors whose gradient is worth computing: those downstream of a trainable
    parameter, the graph's inputs when asked, and ``wanted`` tensors. Worked out at every call,
    so a change to ``trainable`` counts at once."""
    needed = {id(t) for t in wanted}
    if want_inputs:
        needed.update(id(t) for t in graph.inputs)
    for node in graph.nodes:
        if node.layer.trainable_params or any(id(t) in needed for t in node.inbound):
            needed.update(id(t) for t in node.outputs)
    return needed


def backward(graph, tape: Tape, output_grads: list, want_inputs: bool = False,
             wanted=()) -> Gradients:
    """Walk the tape in reverse from the gradients of the graph's outputs (None: that output does
    not contribute). The tensors worth a gradient are the forward pass's when nothing more is
    asked (the same graph a moment before: ``needs_gradient`` takes 70 us on ResNet-20, once a
    step instead of twice)."""
    needed = tape.needed if tape.needed is not None and not want_inputs and not wanted \
        else needs_gradient(graph, want_inputs, wanted)
    wanted_ids = {id(t) for t in wanted}
    grads: dict[int, np.ndarray] = {}
    for tensor, grad in zip(graph.outputs, output_grads):
        if grad is not None:
            _add(grads, id(tensor), grad)
    params: dict = {}
    tensors: dict[int, np.ndarray] = {}
    for node, cache in reversed(tape):
        _node_backward(node, cache, grads, params, needed, wanted_ids)
    for tensor_id in wanted_ids:
        if tensor_id in grads:
            tensors[tensor_id] = grads[tensor_id]
    inputs = [grads.get(id(t)) for t in graph.inputs] if want_inputs else None
    return Gradients(inputs, params, tensors)
