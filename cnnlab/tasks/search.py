"""Photo search, "more like this": the article's Google Photos and Amazon recommendations.

A network trained to tell classes apart puts images that look alike close together in its
penultimate layer. Indexing embeds every image of a folder there (L2-normalised, so a dot
product is the cosine similarity); searching embeds the query the same way and returns the
indexed images with the largest similarity.

    index = build_index("photos/", out="photos.index")     # the shipped CIFAR-10 backbone
    for hit in index.search("query.jpg", k=5):
        print(hit.similarity, hit.path)

Exact search is one matrix-vector product with NumPy. ``backend="faiss"`` (the optional
``cnnlab[search]`` extra) runs the same exact search with faiss' ``IndexFlatIP``, for large
collections; both give the same neighbours.

The index file is an npz written atomically (``io.files``): the vectors, the relative paths
with each file's size and modification time (so re-indexing a grown folder embeds only the
new or changed files), and the model's identity (its name and a hash of its weights), so that
a query is never embedded by another model than the collection was.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.data.folders import IMAGE_EXTENSIONS, conversion_notes
from cnnlab.errors import CnnlabError, ConfigError, DataError, ModelFileError
from cnnlab.io.files import CORRUPT_FILE_ERRORS, ArchiveReader, json_array, write_archive

FORMAT = "cnnlab-index"
VERSION = 1
DEFAULT_MODEL = "cifar10"            # the shipped CIFAR-10 backbone
BACKENDS = ("numpy", "faiss")
_COLOR_MODES = {1: "grayscale", 3: "rgb", 4: "rgba"}


# --- the embedding model ---------------------------------------------------------------------
class Embedder:
    """A model's penultimate layer as an image embedding: ``embed(paths)`` -> ``(N, D)``
    float32 rows of unit length. ``spec`` is how it was named (a shipped weights name or a
    ``.cnnlab`` path); ``identity`` is the model's name and a hash of its weights."""

    def __init__(self, model, spec: str):
        from cnnlab.models import backbone
        self.spec, self.model = spec, model
        self.trunk = backbone(model)
        self.identity = model_identity(model)
        self.input_shape = tuple(model.input_shape)
        if len(self.input_shape) != 3:
            raise ConfigError(f"{spec!r} takes inputs of shape {self.input_shape}; photo search "
                              f"needs an image model (H, W, C).")

    @classmethod
    def load(cls, spec: str = DEFAULT_MODEL) -> Embedder:
        """A shipped weights name ('cifar10', 'digits') or the path of a ``.cnnlab`` model."""
        from cnnlab import zoo
        shipped = {weights for _, weights in zoo.PRETRAINED}
        return cls(zoo.find(spec), spec if spec in shipped else os.path.abspath(spec))

    def image(self, path) -> np.ndarray:
        """One file as the model's input ``(H, W, C)`` in [0, 1], prepared as its training data
        was (``data.image_for_model``)."""
        from cnnlab.data.pictures import image_for_model, open_image
        return image_for_model(self.model, open_image(path))

    def embed_arrays(self, images: np.ndarray) -> np.ndarray:
        vectors = np.asarray(self.trunk.predict(images, batch_size=len(images), verbose=0),
                             dtype=np.float32).reshape(len(images), -1)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)


def model_identity(model) -> dict:
    """The model's name and a SHA-256 of its weights (names, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, variable in sorted(model.named_variables(), key=lambda item: item[0]):
        value = np.ascontiguousarray(variable.numpy())
        digest.update(f"{name}:{value.shape}:{value.dtype}".encode())
        digest.update(value.tobytes())
    return {"name": model.name, "weights_sha256": digest.hexdigest()}


# --- the index ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hit:
    path: str
    similarity: float

    def to_json(self) -> dict:
        return {"path": self.path, "similarity": round(self.similarity, 6)}


class Index:
    """Unit vectors of a folder's images, their paths (relative to ``root``) and file stamps,
    and the identity of the model that embedded them."""

    def __init__(self, root: str, paths: list[str], stamps: list, vectors: np.ndarray,
                 model: dict):
        self.root, self.paths, self.stamps = root, list(paths), [tuple(s) for s in stamps]
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.model = model                  # {"spec", "name", "weights_sha256"}
        self.embedded = 0                   # how many vectors the call that made it embedded
        self.notes: list[str] = []          # how its images were converted (build_index)
        self._faiss = None
        self._own: Embedder | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def save(self, path) -> None:
        meta = {"root": self.root, "paths": self.paths, "stamps": self.stamps,
                "model": self.model}
        write_archive(path, {"format": json_array({"format": FORMAT, "version": VERSION}),
                             "meta": json_array(meta), "vectors": self.vectors})

    def embedder(self, model=None) -> Embedder:
        """The index's own model (loaded from its spec), or ``model`` if it is the same one;
        another model is refused by name."""
        if model is None:                    # its own model: loaded once, at the first query
            if self._own is None:
                self._own = Embedder.load(self.model["spec"])
            embedder = self._own
        else:
            embedder = model if isinstance(model, Embedder) else Embedder.load(model)
        if embedder.identity["weights_sha256"] != self.model["weights_sha256"]:
            raise ConfigError(
                f"This index was built with the model {self.model['name']!r} "
                f"({self.model['spec']}, weights {self.model['weights_sha256'][:12]}); the query "
                f"model is {embedder.identity['name']!r} ({embedder.spec}, weights "
                f"{embedder.identity['weights_sha256'][:12]}). Vectors of two models cannot be "
                f"compared: search with the index's model, or index again with this one.")
        return embedder

    def search(self, query, k: int = 5, model=None, backend: str = "numpy") -> list[Hit]:
        """The ``k`` indexed images most like ``query`` (a path or an image array in [0, 1]
        shaped as the model's input, or a unit vector), best first."""
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive integer; received {k!r}.")
        if isinstance(query, np.ndarray) and query.ndim == 1:
            vector = query.astype(np.float32)
        else:
            embedder = self.embedder(model)
            image = embedder.image(query) if isinstance(query, (str, os.PathLike)) else query
            vector = embedder.embed_arrays(np.asarray(image, np.float32)[None])[0]
        return [Hit(self.paths[i], s) for i, s in self.nearest(vector[None], k, backend)[0]]

    def nearest(self, queries: np.ndarray, k: int, backend: str = "numpy"):
        """For each row of ``queries`` (unit vectors), ``[(index, similarity)]`` of its ``k``
        nearest vectors, best first. Similarities equal to 6 decimals are ties, broken by the
        lower index (the paths are sorted): two copies of one image embed a rounding apart,
        and which came first then depended on the CPU's vector width."""
        if backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}; received {backend!r}.")
        k = min(k, len(self))
        if k == 0:
            return [[] for _ in queries]
        if backend == "faiss":
            scores, ids = self._faiss_index().search(np.ascontiguousarray(queries, np.float32), k)
            return [list(zip(map(int, i), map(float, s))) for i, s in zip(ids, scores)]
        scores = queries @ self.vectors.T                                    # (Q, N)
        results = []
        for row in scores:
            top = np.argpartition(-row, k - 1)[:k] if k < len(row) else np.arange(len(row))
            top = top[np.lexsort((top, -np.round(row[top], TIE_DECIMALS)))]
            results.append([(int(i), float(row[i])) for i in top])
        return results

    def _faiss_index(self):
        if self._faiss is None:
            faiss = require_faiss()
            self._faiss = faiss.IndexFlatIP(self.vectors.shape[1])
            self._faiss.add(self.vectors)
        return self._faiss


#: similarities that agree to this many decimals rank as equal (float32 rounding is ~1e-7)
TIE_DECIMALS = 6


def require_faiss():
    try:
        import faiss
    except ImportError:
        raise ConfigError("backend='faiss' needs faiss: pip install 'cnnlab[search]' "
                          "(faiss-cpu).") from None
    return faiss


def load_index(path) -> Index:
    """An index written by :func:`build_index`, checked (no pickle, shapes before reading)."""
    where = os.fspath(path)
    try:
        with ArchiveReader(where, what="search index") as reader:
            header = reader.json("format")
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise ModelFileError(f"{where!r} is not a cnnlab search index.")
            if header.get("version") != VERSION:
                raise ModelFileError(f"{where!r} is search index version "
                                     f"{header.get('version')!r}; this cnnlab reads {VERSION}.")
            meta = reader.json("meta")
            paths, stamps, model = meta.get("paths"), meta.get("stamps"), meta.get("model")
            if not (isinstance(paths, list) and isinstance(stamps, list)
                    and len(paths) == len(stamps) and isinstance(model, dict)
                    and isinstance(meta.get("root"), str)):
                raise ModelFileError(f"{where!r}: the index's description is damaged.")
            _, dtype = reader.header("vectors")
            vectors = reader.array("vectors")
            if dtype != np.float32 or vectors.ndim != 2 or len(vectors) != len(paths):
                raise ModelFileError(f"{where!r}: expected {len(paths)} float32 vectors; found "
                                     f"{vectors.dtype} {vectors.shape}.")
    except CnnlabError:
        raise
    except CORRUPT_FILE_ERRORS as exc:
        raise ModelFileError(f"{where!r} is corrupt or truncated ({exc}).") from None
    return Index(meta["root"], paths, stamps, vectors, model)


# --- indexing a folder -------------------------------------------------------------------------
def image_files(folder) -> list[str]:
    """Every image under ``folder`` (recursively), relative to it, sorted."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"No folder at {str(folder)!r}: photo search indexes a folder of images.")
    return sorted(str(Path(dirpath, name).relative_to(root))
                  for dirpath, _, names in os.walk(root, followlinks=True) for name in names
                  if Path(name).suffix.lower() in IMAGE_EXTENSIONS)


def _stamp(path: str) -> tuple[int, int]:
    info = os.stat(path)
    return (info.st_size, info.st_mtime_ns)


def build_index(folder, model=DEFAULT_MODEL, out=None, batch_size: int = 64,
                progress: bool = False) -> Index:
    """Embed every image of ``folder`` with ``model`` (a shipped weights name or a ``.cnnlab``
    path, or an :class:`Embedder`) and, with ``out``, write the index there atomically. If
    ``out`` already holds an index of this folder made by the same model, only new or changed
    files are embedded (and deleted ones dropped); an index of another model is refused.
    Unreadable files are skipped with one warning."""
    embedder = model if isinstance(model, Embedder) else Embedder.load(model)
    root = os.path.abspath(folder)
    files = image_files(root)
    known: dict[str, tuple] = {}
    if out is not None and os.path.exists(out):
        previous = load_index(out)
        if previous.model["weights_sha256"] != embedder.identity["weights_sha256"]:
            raise ConfigError(f"{os.fspath(out)!r} holds an index made with the model "
                              f"{previous.model['name']!r} ({previous.model['spec']}); this run "
                              f"uses {embedder.identity['name']!r} ({embedder.spec}). Write to "
                              f"another --out, or delete it to index again.")
        if previous.root == root:
            known = {p: (s, v) for p, s, v in zip(previous.paths, previous.stamps,
                                                   previous.vectors)}
    stamps = {rel: _stamp(os.path.join(root, rel)) for rel in files}
    todo = [rel for rel in files if rel not in known or tuple(known[rel][0]) != stamps[rel]]
    fresh, skipped = _embed_files(embedder, root, todo, batch_size, progress)
    paths, vectors = [], []
    for rel in files:
        vector = fresh.get(rel) if rel in fresh else (known[rel][1] if rel not in todo else None)
        if vector is not None:
            paths.append(rel)
            vectors.append(vector)
    if skipped:
        shown = "; ".join(skipped[:3]) + (" ..." if len(skipped) > 3 else "")
        warnings.warn(f"Skipped {len(skipped)} unreadable image(s): {shown}", RuntimeWarning,
                      stacklevel=2)
    width = embedder.trunk.output_shape[-1]
    index = Index(root, paths, [stamps[p] for p in paths],
                  np.array(vectors, np.float32).reshape(len(paths), width),
                  {"spec": embedder.spec, **embedder.identity})
    index.embedded = len(fresh)
    # one line per way the new files differ from the model's input (colour, size)
    index.notes = conversion_notes([os.path.join(root, rel) for rel in todo],
                                   _COLOR_MODES[embedder.input_shape[-1]],
                                   embedder.input_shape[:2]) if todo else []
    if out is not None:
        index.save(out)
    return index


def _embed_files(embedder, root, files, batch_size, progress):
    """``({relative path: vector}, [one line per unreadable file])``; files are decoded by a
    few threads (Pillow releases the GIL) while the model embeds the batch before."""
    from tqdm.auto import tqdm

    def decode(rel):
        try:
            return embedder.image(os.path.join(root, rel)), None
        except (DataError, OSError) as exc:
            return None, str(exc)

    vectors, skipped = {}, []
    batches = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    with ThreadPoolExecutor(max_workers=2) as pool, tqdm(
            total=len(files), unit="img", desc="Indexing", disable=not progress) as bar:
        ahead = pool.submit(lambda: [decode(rel) for rel in batches[0]]) if batches else None
        for k, batch in enumerate(batches):
            decoded = ahead.result()                 # one batch decoded ahead, no more
            if k + 1 < len(batches):
                ahead = pool.submit(lambda b=batches[k + 1]: [decode(rel) for rel in b])
            good = [(rel, image) for rel, (image, _) in zip(batch, decoded) if image is not None]
            skipped += [error for _, error in decoded if error is not None]
            if good:
                rows = embedder.embed_arrays(np.stack([image for _, image in good]))
                vectors.update((rel, row) for (rel, _), row in zip(good, rows))
            bar.update(len(batch))
    return vectors, skipped
