"""Where a model's arrays live: on the CPU (NumPy) or on the GPU (CuPy), and the crossings.

    place(model, 'gpu')      # its variables and optimizer slots moved there, once
    device_of(model)         # 'cpu' or 'gpu', from where its variables are
    batch_to(values, device) # a batch's arrays on that device (None stays None)

The model runs where its variables are. ``fit``, ``evaluate`` and ``predict`` place it where
``config.device()`` resolves (``engine.devices.resolve``) before their first batch, and it stays
there: a second ``predict`` copies nothing. Every batch crosses once, host to device, and what
the caller gets back crosses once the other way, as Keras does: ``predict`` returns NumPy
arrays, ``evaluate`` floats, ``get_weights`` NumPy copies. Saving reads variables through
``Variable.numpy()``, export converts where its arrays leave for ONNX or PyTorch, and the tools
that read a forward pass's tape (``Model.run``: feature maps, attribution, visualisation) take
the model back to the CPU, where they compute. Metrics are computed on the host, from the
outputs' copy (a batch of class scores: small beside the step).

Why variables move rather than being copied in for each call: a step reads every weight, so a
copy per call would cost a transfer of the whole model each batch. Why scratch buffers are
dropped on a move: they are arrays of the old device, and the next call makes its own.
"""

from __future__ import annotations

from cnnlab.engine import arrays
from cnnlab.graph import execute


def device_of(model) -> str:
    """``'gpu'`` when the model's variables are CuPy arrays, else ``'cpu'``. Asked of every
    batch, so it looks at the first layer with a variable only (about 1 us), not at all of
    them (``model.variables`` builds a list: 44 us for ResNet-20, a fifth of the article
    network's batch-1 prediction)."""
    for layer in model.layers:
        for variable in layer.variables:
            if variable.value is not None:
                return "cpu" if arrays.array_module(variable.value) is arrays.np else "gpu"
    return "cpu"


def place(model, device: str) -> None:
    """Move ``model``'s variables and its optimizer's slots to ``device`` (``'cpu'`` or
    ``'gpu'``) unless they are there. Variable objects stay the same (only their arrays move),
    so layers shared between models and the optimizer's keys by name stay valid."""
    if device_of(model) == device:
        return
    module = arrays.device_module(device)
    for variable in model.variables:
        if variable.value is not None:
            variable.value = arrays.on_device(variable.value, module)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        optimizer.move_slots(lambda value: arrays.on_device(value, module))
    model.workspaces = execute.Workspaces()


def batch_to(values: list, device: str) -> list:
    """``values`` (a batch's inputs or targets) on ``device`` (:func:`device_of` the model)."""
    module = arrays.device_module(device)
    return [None if v is None else arrays.on_device(v, module) for v in values]
