"""Keras-named layers. Each holds its parameters and calls the pure functions in ``cnnlab.engine``."""

from cnnlab.layers.base import LAYER_REGISTRY, Layer, layer_class
from cnnlab.layers.conv import Conv2D, DepthwiseConv2D, SeparableConv2D
from cnnlab.layers.core import (
    ELU,
    Activation,
    Dense,
    Dropout,
    Flatten,
    Input,
    InputLayer,
    LeakyReLU,
    ReLU,
    Softmax,
)
from cnnlab.layers.merge import Add, Average, Concatenate, Maximum, Multiply, Subtract
from cnnlab.layers.normalization import BatchNormalization
from cnnlab.layers.pooling import (
    AveragePooling2D,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    MaxPooling2D,
)
from cnnlab.layers.preprocessing import (
    RandomBrightness,
    RandomContrast,
    RandomCrop,
    RandomFlip,
    RandomRotation,
    RandomTranslation,
    RandomZoom,
    Rescaling,
)
from cnnlab.layers.reshaping import Cropping2D, UpSampling2D, ZeroPadding2D

# Keras aliases
Convolution2D = Conv2D
MaxPool2D = MaxPooling2D
AvgPool2D = AveragePooling2D
GlobalAvgPool2D = GlobalAveragePooling2D
GlobalMaxPool2D = GlobalMaxPooling2D
SeparableConvolution2D = SeparableConv2D

__all__ = ["Layer", "LAYER_REGISTRY", "layer_class", "Input", "InputLayer", "Conv2D", "Convolution2D",
           "MaxPooling2D", "MaxPool2D", "AveragePooling2D", "AvgPool2D", "GlobalAveragePooling2D",
           "GlobalAvgPool2D", "Flatten", "Dense", "Dropout", "Activation", "ReLU", "Softmax",
           "Rescaling", "RandomFlip", "RandomTranslation", "RandomRotation", "RandomZoom",
           "RandomContrast", "RandomBrightness", "BatchNormalization", "Add", "Subtract",
           "Multiply", "Average",
           "Maximum", "Concatenate", "DepthwiseConv2D", "SeparableConv2D",
           "SeparableConvolution2D", "GlobalMaxPooling2D", "GlobalMaxPool2D", "ZeroPadding2D",
           "Cropping2D", "UpSampling2D", "LeakyReLU", "ELU", "RandomCrop"]
