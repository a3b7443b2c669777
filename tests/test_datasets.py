"""Standard datasets: IDX, npz and CIFAR-binary parsing, checksums, atomic downloads, and the
offline message. Files are built from the bundled digits; mirrors are file:// URLs: no network."""

import gzip
import hashlib
import io
import struct
import tarfile

import numpy as np
import pytest

import cnnlab
from cnnlab.datasets import cifar10, download, fashion_mnist, mnist
from cnnlab.errors import DataError


def idx_bytes(array: np.ndarray) -> bytes:
    return b"\0\0\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) \
        + array.astype(np.uint8).tobytes()


@pytest.fixture
def digits():
    (x, y), (xt, yt) = cnnlab.datasets.mnist_sample.load_data()
    return x[:50], y[:50], xt[:20], yt[:20]


def write_idx_folder(folder, digits, compress):
    x, y, xt, yt = digits
    for name, array in zip(mnist.FILES, (x, y, xt, yt)):
        data = idx_bytes(array)
        if compress:
            (folder / name).write_bytes(gzip.compress(data))
        else:
            (folder / name[:-3]).write_bytes(data)


def test_idx_folder_of_raw_files_loads(tmp_path, digits):
    write_idx_folder(tmp_path, digits, compress=False)
    (x, y), (xt, yt) = mnist.load_data(path=tmp_path)
    for got, expected in zip((x, y, xt, yt), digits):
        np.testing.assert_array_equal(got, expected)
    (fx, _), _ = fashion_mnist.load_data(path=tmp_path)
    assert fx.shape == (50, 28, 28)


def test_gz_files_are_checked_against_the_canonical_sha256(tmp_path, digits):
    write_idx_folder(tmp_path, digits, compress=True)       # not the real MNIST bytes
    with pytest.raises(DataError, match="does not have the expected sha256 440fcabf"):
        mnist.load_data(path=tmp_path)


def test_keras_style_npz_loads(tmp_path, digits):
    x, y, xt, yt = digits
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    (a, _), (_, d) = mnist.load_data(path=tmp_path / "mnist.npz")
    np.testing.assert_array_equal(a, x)
    np.testing.assert_array_equal(d, yt)


@pytest.mark.parametrize("damage,match", [
    (lambda b: b[:-10], "truncated or corrupt"),
    (lambda b: b[:6], "truncated inside its header"),
    (lambda b: b"\x12\x34" + b[2:], "bad header"),
    (lambda b: gzip.compress(b)[:30], "not a readable IDX"),
])
def test_damaged_idx_files_are_named(tmp_path, digits, damage, match):
    path = tmp_path / "f.idx"
    path.write_bytes(damage(idx_bytes(digits[0])))
    with pytest.raises(DataError, match=match):
        download.read_idx(path)


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A fake mirror (a folder served as file://) and a fresh cache."""
    served = tmp_path / "mirror"
    served.mkdir()
    monkeypatch.setenv("CNNLAB_HOME", str(tmp_path / "home"))
    return served


def serve_mnist(monkeypatch, served, digits, corrupt=None):
    files = {}
    for name, array in zip(mnist.FILES, digits):
        data = gzip.compress(idx_bytes(array))
        files[name] = hashlib.sha256(data).hexdigest()
        (served / name).write_bytes(data if name != corrupt else data[:-5] + b"xxxxx")
    monkeypatch.setattr(mnist, "FILES", files)
    monkeypatch.setattr(mnist, "MIRRORS", ["file:///nonexistent/first/", served.as_uri() + "/"])


def test_download_checks_caches_and_reuses(monkeypatch, mirror, digits, tmp_path):
    serve_mnist(monkeypatch, mirror, digits)
    (x, _), _ = mnist.load_data()              # the first mirror fails, the fallback serves
    np.testing.assert_array_equal(x, digits[0])
    cached = download.cache_dir() / "mnist"
    assert sorted(p.name for p in cached.iterdir()) == sorted(mnist.FILES)
    for p in mirror.iterdir():                   # offline now: the cache must suffice
        p.unlink()
    (x2, _), _ = mnist.load_data()
    np.testing.assert_array_equal(x2, digits[0])


def test_a_download_with_the_wrong_checksum_never_lands(monkeypatch, mirror, digits):
    serve_mnist(monkeypatch, mirror, digits, corrupt="t10k-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match="checksum mismatch"):
        mnist.load_data()
    cached = download.cache_dir() / "mnist"
    assert "t10k-images-idx3-ubyte.gz" not in [p.name for p in cached.iterdir()]
    assert not [p for p in cached.iterdir() if p.name.startswith(".tmp-")]


def test_an_interrupted_download_leaves_nothing(monkeypatch, mirror, digits):
    serve_mnist(monkeypatch, mirror, digits)

    class Dying(io.BytesIO):
        headers = {}

        def read(self, size=-1):
            data = super().read(min(size, 1000))
            if self.tell() > 2000:
                raise ConnectionResetError("connection reset")
            return data

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(download.urllib.request, "urlopen",
                        lambda url, timeout: Dying(b"\0" * 100_000))
    with pytest.raises(DataError, match="connection reset"):
        mnist.load_data()
    cached = download.cache_dir() / "mnist"
    assert not cached.exists() or not list(cached.iterdir())


def test_a_corrupt_cached_file_is_fetched_again(monkeypatch, mirror, digits):
    serve_mnist(monkeypatch, mirror, digits)
    mnist.load_data()
    cached = download.cache_dir() / "mnist" / "train-images-idx3-ubyte.gz"
    cached.write_bytes(cached.read_bytes()[:100])             # truncated on disk
    (x, _), _ = mnist.load_data()
    np.testing.assert_array_equal(x, digits[0])


def test_offline_message_says_which_file_to_put_where(monkeypatch, mirror):
    monkeypatch.setattr(mnist, "MIRRORS", ["file:///nonexistent/a/", "file:///nonexistent/b/"])
    with pytest.raises(DataError) as error:
        mnist.load_data()
    message = str(error.value)
    target = download.cache_dir() / "mnist" / "train-images-idx3-ubyte.gz"
    assert "Could not download train-images-idx3-ubyte.gz" in message
    assert str(target) in message and mnist.FILES["train-images-idx3-ubyte.gz"] in message


def cifar_records(images, labels):
    chw = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return np.concatenate([labels[:, None].astype(np.uint8), chw], axis=1).tobytes()


@pytest.fixture
def cifar_folder(tmp_path, digits):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    batches = {}
    for name in cifar10.TRAIN + cifar10.TEST:
        images = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, 7).astype(np.uint8)
        (folder / name).write_bytes(cifar_records(images, labels))
        batches[name] = (images, labels)
    return folder, batches


def test_cifar_binary_folder_loads_nhwc(cifar_folder):
    folder, batches = cifar_folder
    (x, y), (xt, yt) = cifar10.load_data(path=folder)
    assert x.shape == (35, 32, 32, 3) and y.shape == (35, 1) and xt.shape == (7, 32, 32, 3)
    np.testing.assert_array_equal(x[:7], batches["data_batch_1.bin"][0])
    np.testing.assert_array_equal(yt[:, 0], batches["test_batch.bin"][1])


def test_cifar_archive_is_checked_and_read_without_extracting(cifar_folder, tmp_path,
                                                              monkeypatch):
    folder, batches = cifar_folder
    archive = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-bin")
    with pytest.raises(DataError, match="expected sha256"):
        cifar10.load_data(path=archive)                      # not the canonical archive
    monkeypatch.setattr(cifar10, "SHA256", download.sha256_of(archive))
    (x, _), _ = cifar10.load_data(path=archive)
    np.testing.assert_array_equal(x[7:14], batches["data_batch_2.bin"][0])


def test_truncated_cifar_batch_is_named(cifar_folder):
    folder, _ = cifar_folder
    data = (folder / "data_batch_3.bin").read_bytes()
    (folder / "data_batch_3.bin").write_bytes(data[:-100])
    with pytest.raises(DataError, match="data_batch_3.bin .* not a whole number"):
        cifar10.load_data(path=folder)


def _faces_archive(folder, faces=6, scenes=3, face_size=36):
    """A small faces-train.tar.gz: grey face crops and colour scenes, as the real one."""
    from PIL import Image
    rng = np.random.default_rng(0)
    path = folder / "faces-train.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for kind, count, size in (("faces", faces, (face_size, face_size)),
                                  ("non-face-scenes", scenes, (90, 70))):
            for k in range(count):
                shape = size[::-1] + (() if kind == "faces" else (3,))
                data = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(data, "PNG")
                info = tarfile.TarInfo(f"faces-train/{kind}/{kind}_{k:03d}.png")
                info.size = len(data.getvalue())
                archive.addfile(info, io.BytesIO(data.getvalue()))
    return path


def test_web_faces_reads_the_archive_splits_by_name_and_pastes_known_boxes(tmp_path):
    from cnnlab.datasets import web_faces
    from cnnlab.tasks.detect import iou
    data = web_faces.read(str(_faces_archive(tmp_path, faces=40, scenes=12)))
    assert data.faces.shape == (40, 36, 36) and data.faces.dtype == np.uint8
    assert len(data.scenes) == 12 and data.scenes[0].shape == (70, 90)
    train, held_out = web_faces.split(data, share=0.3)
    assert sorted(train.face_names + held_out.face_names) == data.face_names
    assert not set(train.scene_names) & set(held_out.scene_names) and held_out.scene_names
    # a file's side depends on its name alone
    again = web_faces.split(web_faces.Part(data.faces[5:], data.scenes, data.face_names[5:],
                                           data.scene_names), share=0.3)[1]
    assert set(again.face_names) == set(held_out.face_names) - set(data.face_names[:5])
    photos = web_faces.pasted_photos(data.faces, data.scenes, seed=1, per_scene=(2, 3),
                                     sizes=(24, 60), min_side=200)
    for grey, boxes in photos:
        assert min(grey.shape) >= 200 and grey.dtype == np.float32 and 2 <= len(boxes) <= 3
        for k, (x0, y0, x1, y1) in enumerate(boxes):
            assert x1 - x0 == y1 - y0 and 24 <= x1 - x0 <= 60
            assert all(iou((x0, y0, x1, y1), other) == 0 for other in boxes[k + 1:])


def test_web_faces_names_what_is_wrong_with_its_files(tmp_path):
    from cnnlab.datasets import web_faces
    with pytest.raises(DataError, match="No faces data at"):
        web_faces.read(str(tmp_path / "missing.tar.gz"))
    archive = _faces_archive(tmp_path)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[:len(archive.read_bytes()) // 2])
    with pytest.raises(DataError, match="cut.tar.gz"):
        web_faces.read(str(cut))
    (tmp_path / "small").mkdir()
    with pytest.raises(DataError, match="18x18|\\(18, 18\\)"):
        web_faces.read(str(_faces_archive(tmp_path / "small", face_size=18)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="0 face crops and 0 scenes"):
        web_faces.read(str(tmp_path / "empty"))
