"""The engine: every op of the article as pure NumPy functions, forward and backward side by side.

Layout is channels-last, NHWC, as in Keras. Shape letters, used in every module here:

    N  batch size            H, W    input height and width       C   input channels
    F  filters (C_out)       KH, KW  kernel or pool window        Ho, Wo  output height and width
    Hp, Wp  height and width after zero padding                   D   features of a dense layer

Each ``*_forward`` returns ``(output, cache)``; its ``*_backward`` reads only that cache and the
upstream gradient. Layers (``cnnlab.layers``) hold parameters and call these functions.

Where a NumPy op is slow, a compiled kernel sits beside it (``compiled``: ``*_kernels.py``,
the NumPy code staying as the reference); the ops whose NumPy code runs on CuPy as it is take
their array module from their inputs (``arrays``).
"""
