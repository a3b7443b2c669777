"""How the classes arrange themselves: the penultimate layer's features of a dataset, projected to
2-D.

    points = embedding_map(model, images)                  # (N, 2), PCA (NumPy)
    points = embedding_map(model, images, method="tsne")   # t-SNE (scikit-learn, an extra)

PCA keeps the two directions along which the features vary most: distances in the map are
true distances in that plane. t-SNE (van der Maaten & Hinton, 2008) keeps neighbours together
instead, which shows clusters better but says nothing about how far apart two clusters are.
"""

from __future__ import annotations

import numpy as np

from cnnlab.errors import ConfigError

METHODS = ("pca", "tsne")


def penultimate_features(model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The layer before the classifier (``models.backbone``) for every image: ``(N, D)``."""
    from cnnlab.models import backbone
    trunk = backbone(model)
    features = trunk.predict(np.asarray(images, dtype=model.dtype), batch_size=batch_size,
                             verbose=0)
    return np.asarray(features, dtype=np.float64).reshape(len(images), -1)


def pca(features: np.ndarray, components: int = 2) -> np.ndarray:
    """``(N, D)`` -> ``(N, components)``: the centred features on their leading principal axes
    (SVD). Each axis' sign is fixed so that its largest loading is positive: the same data
    always gives the same picture."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ConfigError(f"PCA needs (N, D) features with N >= 2; received {x.shape}.")
    x = x - x.mean(axis=0)
    _, _, axes = np.linalg.svd(x, full_matrices=False)
    axes = axes[:components]
    signs = np.sign(axes[np.arange(len(axes)), np.argmax(np.abs(axes), axis=1)])
    return x @ (axes * signs[:, None]).T


def tsne(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """``(N, D)`` -> ``(N, 2)`` with scikit-learn's t-SNE (PCA-initialised, seeded)."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise ConfigError("t-SNE maps need scikit-learn: pip install 'cnnlab[embedding]' (or "
                          "use method='pca', built in).") from None
    x = np.asarray(features, dtype=np.float64)
    perplexity = min(perplexity, (len(x) - 1) / 3)        # scikit-learn needs perplexity < N
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                learning_rate="auto").fit_transform(x)


def embedding_map(model, images: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """Penultimate features of ``images`` ``(N, H, W, C)`` projected to ``(N, 2)``."""
    if method not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}; received {method!r}.")
    features = penultimate_features(model, images)
    return pca(features) if method == "pca" else tsne(features, seed)
