"""Seeing inside a CNN: feature maps, filters, curves, confusion, mistakes, Grad-CAM, saliency,
and the article's concepts (convolution, padding, stride, pooling) explained with real numbers.

matplotlib draws the figures, on figures of their own (no pyplot, no change to the user's
backend); the arrays behind every picture (``feature_maps``, ``feature_map_grid``, ``grad_cam``,
``saliency``, ``confusion_matrix``) are plain NumPy.
"""

from cnnlab.viz.attribution import grad_cam, saliency
from cnnlab.viz.grids import feature_map_grid, kernel_grid
from cnnlab.viz.plots import (
                              confusion_matrix,
                              feature_maps,
                              misclassified,
                              plot_confusion_matrix,
                              plot_feature_maps,
                              plot_filters,
                              plot_grad_cam,
                              plot_history,
                              plot_misclassified,
)

__all__ = ["feature_maps", "feature_map_grid", "kernel_grid", "plot_feature_maps", "plot_filters",
           "plot_history", "confusion_matrix", "plot_confusion_matrix", "misclassified",
           "plot_misclassified", "grad_cam", "saliency", "plot_grad_cam"]
