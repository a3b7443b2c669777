"""The graph's two fusions, as rewrites of which activation runs where. Planned from the graph
and the layers' current settings at every call (a few dozen attribute reads), so a change to a
layer's activation counts at once and no plan can go stale. The unfused graph is the reference:
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
"""

from __future__ import annotations

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
