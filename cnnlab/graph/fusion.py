"""The graph's fusions: rewrites of which activation runs where (1.-3.) and of which node's op
runs inside the op before it (4.-7.). Planned from the graph and the layers' current settings
at every call (a few dozen attribute reads), so a change to a layer's activation counts at once
and no plan can go stale. The unfused graph is the reference:
``activations = {}`` runs every layer exactly as configured.

1. **ReLU after max pooling.** ``conv(relu) -> MaxPooling2D`` runs as ``conv -> pool -> relu``.
   ReLU is monotone, so ``relu(max(z)) == max(relu(z))``, and the gradients agree too (where the
   max is <= 0 both are zero). After a 2x2 pool there is a quarter of the data: this saves two
   full passes over the network's largest activations in every step. Only when the pool is the
   conv's sole consumer and the conv's output is not itself a model output.
2. **Softmax into the loss.** A model output made by a softmax, fed to cross-entropy, is left as
   logits: the loss's fused gradient ``(p - y) / N`` is exact and never divides by a
   probability.
3. **ReLU into the BatchNormalization or Add before it.** ``BatchNormalization -> ReLU`` (a
   ``ReLU`` layer or ``Activation('relu')``, the BN's sole consumer) runs the ReLU inside the
   BN's step, in place on the BN's own output: one map-sized array and one pass fewer, forward
   and backward, and the ReLU node passes its input on. In training with compiled kernels it
   runs inside the BN's own passes (``engine.normalization_kernels``), which saves the ReLU's
   pass each way too. ResNet's ``Add -> ReLU`` the same way: the sum and its ReLU in one pass
   with compiled kernels (``engine.merge_kernels``), in place after the sum on the reference.
4. **BatchNormalization folded into the convolution before it** (inference only: no backward
   pass follows). In inference mode BN is a per-channel map ``y * scale + shift``; after a
   linear op (Conv2D, DepthwiseConv2D, Dense with no activation) it folds into that op's kernel
   and bias (``engine.normalization.fold_affine``), so the whole BN pass over the feature map
   disappears. Only when the BN is the op's sole consumer and the op's output is not a model
   output, and not under a mixed dtype policy (whose op rounds its output before the BN does
   its float32 arithmetic); the weights are folded at every call (a few microseconds), so they
   are never stale.
5. **The residual Add joined into the convolution before it** (inference only). ResNet's
   ``conv -> BN -> Add(shortcut) -> ReLU``: with the BN folded (4.), the conv adds the
   shortcut and takes the ReLU in its own last pass (compiled Winograd's output transform:
   ``engine.conv``), and the Add node passes its input on: the map is not read twice and
   written again. Only a Conv2D (``folds_output_residual``) whose output (or its folded BN's)
   goes to a two-input Add alone and is not a model output, where the shortcut is computed
   before the conv runs; the Add's planned activation ('linear' or 'relu') becomes the conv's.
   Where the conv's path cannot take the shortcut in its pass, it runs the Add's own sum after
   it, so the values are the unfused graph's on every path. Measured on ResNet-20 predicting
   128 images: 1 thread, the output transforms and Adds took 20.4 ms, the joined transforms
   19.2 (the shortcut's read from memory was most of the Add's cost, and stays); 2 threads,
   minima of 4 interleaved pairs of processes 42.2-44.7 -> 42.2-43.1 ms a call.
6. **Max pooling run inside the convolution before it** (training and inference).
   ``Conv2D -> MaxPooling2D`` whose windows tile the map (stride = pool, 'valid'): the conv
   returns the pooled map (``ctx.output_pool``) and the pool node passes it on; in a backward
   pass its gradient goes straight to the conv, whose cache holds the winners
   (``engine.conv.PooledCache``). The pool's planned activation (a ReLU moved after it, 1.)
   becomes the conv's, run after the pooling. Where the conv takes the implicit GEMM (a few
   input channels: the article's first layer, face_net's) and the pool is 2x2, the pooling
   runs on each row of windows while the rows it reads are in cache, so the conv's output is
   never written to memory (nor, in training, its gradient); every other pair runs the
   pooling after the conv, in the conv's call, the values those of the two nodes run apart.
   Only where the pool is the conv's sole consumer and neither output is a model output, and
   not under a mixed dtype policy. The article's first layer and its pool, 64 images,
   float32, one thread (median of 30, ms): forward 1.18-1.30 apart, 0.81-0.94 in one pass
   (3 runs; the conv alone 0.81-0.84, so the pooling costs next to nothing; 0.95-1.14 before
   its ReLU's zero was typed, 4 runs); kernel and bias gradients from the pool's gradient
   0.93-1.03 apart against 0.86-1.01 (within noise alone: the gain is inside the network,
   where the 4.7 MB the pair no longer writes would have left the cache). The article's
   training step (batch 128, two thread shards), fusion off against on, interleaved fresh
   processes, 120 steps each: medians 17.26-18.55 -> 16.27-17.41 ms (4 pairs, faster in all),
   and on the final kernels 17.45-18.04 -> 16.49-17.97 (4 pairs: faster in 2, level in 2;
   minima 16.41-16.86 -> 15.54-15.94, faster in all).
7. **A chain of convolutions, in one call** (inference only). MobileNet's ``stem -> BN ->
   ReLU -> DepthwiseConv2D -> BN -> ReLU -> Conv2D(1x1) -> BN -> ReLU -> DepthwiseConv2D ->
   ...``: with the BNs folded (4.) and the ReLUs moved into them (3.), the first layer runs
   every op of the chain, a few images at a time (``engine.chain``), so each op reads the one
   before's output from L2 and no map between is written to memory; the other ops' nodes, and
   ReLU nodes left between (planned 'linear'), pass the result on. An op joins a chain when it
   is a DepthwiseConv2D of depth multiplier 1, or a Conv2D with a 1x1 kernel, stride 1,
   dilation 1 and no explicit padding (the first op may also be a Conv2D of at most
   ``engine.conv.IMPLICIT_MAX_CHANNELS`` input channels: a stem); when its planned activation
   is 'linear' or 'relu'; when it runs no other node's op already (a residual Add, 5., as
   MobileNetV2's projection does; a pooling, 6.); when it is not under a mixed dtype policy;
   and when the output of the op before (or of its folded BN) reaches it alone, through
   nothing but such ReLU nodes, and is not a model output. The values are the unfused
   graph's, bit for bit. mobilenet_small predicting 128 images (medians of 30 calls,
   interleaved fresh processes, ms):

   ===================================================  ===========  ===========
   the plan                                             one thread   two threads
   ===================================================  ===========  ===========
   each op apart                                        65.4
   a 1x1 layer and the depthwise layer after it, in     58.9-60.1    30.5-35.6
   pairs (session 37's form of this rule)
   one chain from the first depthwise layer (12 ops)    52.2-57.0    28.9-30.4
   (against the pairs, 4 runs each)
   one chain from the stem (13 ops; against the one     51.3-51.9    27.9-30.2
   above, 52.8-53.5 and 29.3-30.5, 3 runs each)
   ===================================================  ===========  ===========

   One thread under cProfile, 53 ms a call (``depthwise_kernels``' kernel-row blocks in):
   the 1x1 GEMMs 36.8 ms, at 54.6 G multiply-adds a second, about this core's peak; the
   depthwise loops 6.5; the stem 3.0; the chain's own Python about 2 (832 kernel calls a
   call). ``engine.chain.CHAIN_PIECE_BYTES`` sets the pieces.
"""

from __future__ import annotations

from typing import NamedTuple

from cnnlab.engine.conv import IMPLICIT_MAX_CHANNELS
from cnnlab.layers.conv import Conv2D, DepthwiseConv2D
from cnnlab.layers.core import Activation, ReLU
from cnnlab.layers.merge import Add
from cnnlab.layers.normalization import BatchNormalization
from cnnlab.layers.pooling import MaxPooling2D


def plan(graph, logits_outputs=()) -> tuple[dict, set[int]]:
    """``({node: activation to run instead of its own}, {indices of outputs left as logits})``.
    ``logits_outputs``: indices of outputs whose loss can take logits in place of a softmax."""
    activations: dict = {}
    output_ids = {id(t) for t in graph.outputs}
    for node in graph.nodes:
        layer = node.layer
        if layer.activation != "relu" or len(node.outputs) != 1 \
                or id(node.outputs[0]) in output_ids:
            continue
        consumers = graph.consumers.get(id(node.outputs[0]), [])
        if len(consumers) == 1 and type(consumers[0].layer) is MaxPooling2D \
                and consumers[0].layer.activation == "linear" and consumers[0] not in activations:
            activations[node] = "linear"
            activations[consumers[0]] = "relu"
    for node in graph.nodes:
        if type(node.layer) not in (BatchNormalization, Add) or node.layer.activation != "linear" \
                or node in activations or id(node.outputs[0]) in output_ids:
            continue
        consumers = graph.consumers.get(id(node.outputs[0]), [])
        if len(consumers) == 1 and type(consumers[0].layer) in (ReLU, Activation) \
                and consumers[0].layer.activation == "relu" and consumers[0] not in activations:
            activations[node] = "relu"
            activations[consumers[0]] = "linear"
    as_logits = set()
    for index in logits_outputs:
        tensor = graph.outputs[index]
        node = tensor.node
        if node.layer.activation == "softmax" and node not in activations \
                and not graph.consumers.get(id(tensor)) \
                and sum(t is tensor for t in graph.outputs) == 1 and len(node.outputs) == 1:
            activations[node] = "linear"
            as_logits.add(index)
    return activations, as_logits


def pooled_convs(graph, activations: dict) -> dict:
    """``{conv node: the MaxPooling2D node run inside it}`` (the module docstring's 6.), for a
    training or inference call. ``activations``: the other fusions' plan."""
    pools = {}
    output_ids = {id(t) for t in graph.outputs}
    for node in graph.nodes:
        layer = node.layer
        if not layer.folds_output_pool or activations.get(node, layer.activation) != "linear" \
                or layer.dtype_policy.rounds or len(node.outputs) != 1 \
                or id(node.outputs[0]) in output_ids:
            continue
        consumers = graph.consumers.get(id(node.outputs[0]), [])
        if len(consumers) != 1 or type(consumers[0].layer) is not MaxPooling2D:
            continue
        pool = consumers[0].layer
        if pool.strides == pool.pool_size and pool.padding == "valid" \
                and not pool.dtype_policy.rounds and id(consumers[0].outputs[0]) not in output_ids \
                and activations.get(consumers[0], pool.activation) in ("linear", "relu"):
            pools[node] = consumers[0]
    return pools


class Link(NamedTuple):
    """An op a chain's first op runs after it, in its own call (``separable_chains``)."""
    node: object         # a 1x1 Conv2D's or DepthwiseConv2D's node, which then passes it on
    between: tuple       # the ReLU nodes planned 'linear' before it, which pass it on too
    relu: bool           # its planned activation (planned_activation) is a ReLU


def separable_chains(graph, activations: dict, folds: dict, fused: dict) -> dict:
    """``{first op's node: (Link, ...)}`` (the module docstring's 7.) for an inference call:
    each run of ops that can chain (:func:`_chainable`; the first may be a stem instead), each
    op's output (or its folded BN's) read by the next alone, through nothing but ReLU nodes
    planned 'linear', with no model output on the way. ``activations`` and ``folds``: the other
    fusions' plan; ``fused``: nodes whose op runs another node's already (5., 6.), which never
    chain."""
    chains, linked = {}, set()
    output_ids = {id(t) for t in graph.outputs}
    for node in graph.nodes:                                       # in topological order
        if id(node) in linked or node in fused \
                or not _chainable(node, activations, folds, first=True):
            continue
        links, op = [], node
        while True:
            tensor, between = folds.get(op, op).outputs[0], []
            while id(tensor) not in output_ids and len(graph.consumers.get(id(tensor), [])) == 1:
                after = graph.consumers[id(tensor)][0]
                if type(after.layer) not in (ReLU, Activation) \
                        or activations.get(after) != "linear":
                    break
                between.append(after)
                tensor = after.outputs[0]
            consumers = graph.consumers.get(id(tensor), [])
            if id(tensor) in output_ids or len(consumers) != 1 or consumers[0] in fused \
                    or not _chainable(consumers[0], activations, folds):
                break
            op = consumers[0]
            links.append(Link(op, tuple(between),
                              planned_activation(op, activations, folds) == "relu"))
            linked.add(id(op))
        if links:
            chains[node] = tuple(links)
    return chains


def _chainable(node, activations: dict, folds: dict, first: bool = False) -> bool:
    """Whether ``node``'s op can run in a chain: a DepthwiseConv2D of depth multiplier 1, or a
    Conv2D with a 1x1 kernel, stride 1, dilation 1 and no explicit padding, or, ``first`` in
    it, a Conv2D of at most ``engine.conv.IMPLICIT_MAX_CHANNELS`` input channels (a stem); with
    one output, planned activation 'linear' or 'relu', not under a mixed dtype policy."""
    layer = node.layer
    if layer.dtype_policy.rounds or len(node.outputs) != 1 or len(node.inbound) != 1 \
            or planned_activation(node, activations, folds) not in ("linear", "relu"):
        return False
    if type(layer) is DepthwiseConv2D:
        return layer.depth_multiplier == 1
    if type(layer) is not Conv2D:
        return False
    if first and node.inbound[0].shape[-1] <= IMPLICIT_MAX_CHANNELS:
        return True
    return tuple(layer.kernel_size) == (1, 1) and tuple(layer.strides) == (1, 1) \
        and tuple(layer.dilation_rate) == (1, 1) \
        and layer.padding in ("valid", "same")              # 'valid' = 'same' here: no padding


def planned_activation(node, activations: dict, folds: dict) -> str:
    """The activation that runs after ``node``'s op in this plan: its folded BatchNormalization's
    planned one (a ReLU moved into the BN, 3.) where one is folded into it, else its own planned
    or configured one."""
    bn = folds.get(node)
    if bn is not None:
        return activations.get(bn, "linear")
    return activations.get(node, node.layer.activation)


def batch_norm_folds(graph, activations: dict) -> dict:
    """``{linear op's node: the BatchNormalization node folded into it}`` for an inference call.
    ``activations``: the other fusions' plan (a node they rewrite is left alone)."""
    folds = {}
    output_ids = {id(t) for t in graph.outputs}
    for node in graph.nodes:
        layer = node.layer
        if not layer.folds_output_affine or layer.activation != "linear" \
                or layer.dtype_policy.rounds or node in activations or len(node.outputs) != 1 \
                or id(node.outputs[0]) in output_ids:
            continue
        consumers = graph.consumers.get(id(node.outputs[0]), [])
        if len(consumers) == 1 and type(consumers[0].layer) is BatchNormalization \
                and consumers[0].layer.activation == "linear" \
                and activations.get(consumers[0], "linear") in ("linear", "relu"):
            folds[node] = consumers[0]           # a ReLU moved into the BN moves on, to the op
    return folds


class Join(NamedTuple):
    """A residual Add run inside the op before it (``residual_joins``)."""
    add: object          # the Add's node, which then passes ``joined`` on
    joined: object       # the Add's input the op (or its folded BN) writes
    residual: object     # the Add's other input, which the op adds


def residual_joins(graph, activations: dict, folds: dict) -> dict:
    """``{op node: Join}`` for an inference call (the module docstring's 5.). ``activations``
    and ``folds``: the other fusions' plans."""
    joins = {}
    output_ids = {id(t) for t in graph.outputs}
    folded_into = {id(bn): op for op, bn in folds.items()}
    order = {id(node): k for k, node in enumerate(graph.nodes)}
    for add in graph.nodes:
        if type(add.layer) is not Add or len(add.inbound) != 2 \
                or add.inbound[0] is add.inbound[1] or add.layer.dtype_policy.rounds \
                or activations.get(add, add.layer.activation) not in ("linear", "relu"):
            continue
        for joined, residual in (add.inbound, add.inbound[::-1]):
            op = _joinable_op(graph, joined, add, activations, folded_into, output_ids)
            # the residual is ready when the op runs: a graph input's node is not a step (-1)
            if op is not None and op not in joins \
                    and order.get(id(residual.node), -1) < order[id(op)]:
                joins[op] = Join(add, joined, residual)
                break
    return joins


def _joinable_op(graph, joined, add, activations: dict, folded_into: dict, output_ids):
    """The node whose op can add the residual for ``add``: the producer of ``joined``, or the
    op a BatchNormalization producing it is folded into; None where there is none."""
    producer = joined.node
    if id(joined) in output_ids or graph.consumers.get(id(joined), []) != [add] \
            or len(producer.outputs) != 1:
        return None
    if id(producer) in folded_into:           # batch_norm_folds vouches for the op before it
        op = folded_into[id(producer)]
        if activations.get(producer, "linear") != "linear":    # a ReLU moved into the BN
            return None
    else:
        op = producer
        if op in activations or op.layer.activation != "linear" or op.layer.dtype_policy.rounds:
            return None
    return op if op.layer.folds_output_residual else None
