"""Files in and out.

    files.py       atomic writes and the pickle-free zip-of-.npy container
    saving.py      the .cnnlab model file (format version 2: the graph, and everything by name)
    export/        ONNX, PyTorch and Keras weights, one small converter per layer type
"""
