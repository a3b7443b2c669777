"""Photo search: the index file, incremental indexing, exact neighbours (NumPy and faiss), the
CLI, and bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from web import AUTH, signed_in

import cnnlab
from cnnlab import zoo
from cnnlab.errors import ConfigError, ModelFileError
from cnnlab.tasks import search


def _photo(rng, colour, size=32):
    pixels = rng.integers(0, 100, (size, size, 3), dtype=np.uint8)
    pixels[..., colour] += 150
    return Image.fromarray(pixels)


@pytest.fixture
def photos(tmp_path):
    """12 photos in nested folders: reds, greens, blues; one greyscale, one RGBA, one 50x40."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for colour, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(4):
            _photo(rng, colour).save(root / name / f"{i}.png")
    Image.open(root / "red" / "0.png").convert("L").save(root / "red" / "grey.png")
    Image.open(root / "green" / "0.png").convert("RGBA").save(root / "green" / "alpha.png")
    _photo(rng, 2).resize((50, 40)).save(root / "blue" / "wide.jpg")
    return root


def test_search_returns_the_exact_nearest_images_by_cosine_similarity(photos, tmp_path):
    index = search.build_index(photos, out=tmp_path / "p.index")
    assert len(index) == 15 and index.embedded == 15
    assert any("greyscale" in note for note in index.notes)
    assert any("Resizing images of 50x40" in note for note in index.notes)
    # the reference: the full model's penultimate layer, by hand, and a brute-force ranking
    model = zoo.get("cifar_vgg", weights="cifar10")
    features = cnnlab.Model(model.input, model.get_layer("features").output)
    files = sorted(str(p.relative_to(photos)) for p in photos.rglob("*") if p.is_file())
    assert index.paths == files
    images = np.stack([np.asarray(Image.open(photos / f).convert("RGB").resize((32, 32),
                                  Image.BILINEAR), np.float32) / 255 for f in files])
    vectors = features.predict(images, verbose=0).astype(np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(index.vectors, vectors, atol=1e-5)
    for q, name in enumerate(files):
        hits = search.load_index(tmp_path / "p.index").search(str(photos / name), k=4)
        reference = vectors @ vectors[q]
        found = [files.index(h.path) for h in hits]
        # the reference's 4 best, each within float32 rounding (a twin's tie may swap places)
        np.testing.assert_allclose(reference[found], np.sort(reference)[::-1][:4], atol=1e-5)
        assert hits[0].similarity == pytest.approx(1, abs=1e-5)          # itself (or a twin:
        assert name in [h.path for h in hits[:2]]                         # alpha.png is 0.png)
        assert [h.similarity for h in hits] == sorted((h.similarity for h in hits), reverse=True)
        for a, b in zip(hits, hits[1:]):                                   # ties: by path
            if round(a.similarity, 6) == round(b.similarity, 6):
                assert a.path < b.path


def test_a_tie_in_similarity_is_broken_by_path_whatever_the_rounding():
    """Two copies of one image embed a rounding apart (one ulp, as an AVX2 CPU without AVX-512
    computed): they rank by path, not by that last bit."""
    vectors = np.eye(3, 4, dtype=np.float32)
    vectors[2] = vectors[0]
    vectors[0, 0] = np.nextafter(np.float32(1), np.float32(0))       # 'a.png' a rounding below
    index = search.Index("/", ["a.png", "b.png", "c.png"], [(0, 0)] * 3, vectors,
                         {"spec": "x", "name": "x", "weights_sha256": "0"})
    hits = index.search(np.array([1, 0, 0, 0], np.float32), k=3)
    assert [h.path for h in hits] == ["a.png", "c.png", "b.png"]


def test_faiss_finds_the_same_neighbours_on_the_same_vectors():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((3000, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = search.Index("/", [str(i) for i in range(3000)], [(0, 0)] * 3000, vectors,
                         {"spec": "x", "name": "x", "weights_sha256": "0"})
    queries = vectors[rng.integers(0, 3000, 25)] + 0.05 * rng.standard_normal((25, 64))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    exact, fast = index.nearest(queries, 10), index.nearest(queries, 10, backend="faiss")
    for ours, theirs in zip(exact, fast):
        assert [i for i, _ in ours] == [i for i, _ in theirs]
        np.testing.assert_allclose([s for _, s in ours], [s for _, s in theirs], atol=1e-5)


def test_indexing_a_grown_folder_embeds_only_new_or_changed_files(photos, tmp_path):
    out = tmp_path / "p.index"
    first = search.build_index(photos, out=out)
    rng = np.random.default_rng(5)
    _photo(rng, 0).save(photos / "red" / "new.png")
    _photo(rng, 1).save(photos / "green" / "1.png")                 # changed
    os.remove(photos / "blue" / "wide.jpg")                          # gone
    second = search.build_index(photos, out=out)
    assert second.embedded == 2 and len(second) == len(first)
    assert "red/new.png" in second.paths and "blue/wide.jpg" not in second.paths
    unchanged = first.paths.index("red/1.png")
    np.testing.assert_array_equal(second.vectors[second.paths.index("red/1.png")],
                                  first.vectors[unchanged])
    assert search.build_index(photos, out=out).embedded == 0


def test_unreadable_files_are_skipped_with_one_warning(photos, tmp_path):
    (photos / "red" / "broken.jpg").write_bytes(b"not a jpeg")
    (photos / "red" / "half.png").write_bytes((photos / "red" / "1.png").read_bytes()[:80])
    with pytest.warns(RuntimeWarning, match=r"Skipped 2 unreadable image\(s\)") as caught:
        index = search.build_index(photos, out=tmp_path / "p.index")
    assert len(caught) == 1 and len(index) == 15


def test_an_index_is_refused_for_another_model_and_when_damaged(photos, tmp_path):
    out = tmp_path / "p.index"
    index = search.build_index(photos, out=out)
    with pytest.raises(ConfigError, match="built with the model 'cifar_vgg'.*'article_cnn'"):
        index.search(str(photos / "red" / "0.png"), model="digits")
    with pytest.raises(ConfigError, match="holds an index made with the model 'cifar_vgg'"):
        search.build_index(photos, model="digits", out=out)
    data = out.read_bytes()
    (tmp_path / "cut.index").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="cut.index"):
        search.load_index(tmp_path / "cut.index")
    with pytest.raises(ModelFileError, match="No search index"):
        search.load_index(tmp_path / "missing.index")
    cnnlab.zoo.get("lenet5").save(tmp_path / "model.cnnlab")
    with pytest.raises(ModelFileError, match="not a cnnlab search index"):
        search.load_index(tmp_path / "model.cnnlab")


def test_a_missing_faiss_names_the_install(monkeypatch, photos, tmp_path):
    index = search.build_index(photos)
    assert index.embedder() is index.embedder()          # its model is loaded once, not per query
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ConfigError, match=r"pip install 'cnnlab\[search\]'"):
        index.search(str(photos / "red" / "0.png"), backend="faiss")


def test_cli_index_and_search_with_json(photos, tmp_path):
    out = tmp_path / "p.index"

    def cnnlab_cli(*args):
        return subprocess.run([sys.executable, "-m", "cnnlab", *args], capture_output=True,
                              text=True, timeout=120)

    result = cnnlab_cli("index", str(photos), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "Indexed 15 images" in result.stdout and "Converting greyscale" in result.stdout
    result = cnnlab_cli("search", str(out), str(photos / "blue" / "2.png"), "-k", "3", "--json")
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    assert [sorted(h) for h in hits] == [["path", "similarity"]] * 3
    assert hits[0]["path"] == str(photos / "blue" / "2.png")
    result = cnnlab_cli("search", str(out), str(photos / "nope.png"))
    assert result.returncode == 1 and "nope.png" in result.stderr


@pytest.fixture
def search_server(photos, tmp_path, monkeypatch):
    """`cnnlab serve --index` on a free loopback port: ``(base URL, photos folder)``."""
    import threading

    from cnnlab import serve
    monkeypatch.setenv("CNNLAB_HOME", str(tmp_path / "home"))
    index = search.build_index(photos, out=tmp_path / "p.index")
    from web import TOKEN
    app = serve.App({"lenet": (zoo.get("lenet5"), "zoo")}, serve.models_dir(), index=index,
                    token=TOKEN)
    server = serve.make_server(app, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    yield server.url.rstrip("/"), photos
    server.shutdown()
    server.server_close()


def _http(url, body=None):
    import urllib.error
    import urllib.request
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                     headers={"Content-Type": "image/png", **AUTH})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_the_search_api_answers_nearest_photos_and_serves_only_indexed_files(search_server):
    base, photos = search_server
    status, body = _http(base + "/api/search/info")
    assert status == 200 and json.loads(body)["indexed"] == 15
    status, body = _http(base + "/api/search?k=3", (photos / "green" / "2.png").read_bytes())
    assert status == 200, body
    hits = json.loads(body)["hits"]
    assert hits[0]["path"] == "green/2.png" and hits[0]["similarity"] == pytest.approx(1, abs=1e-5)
    status, image = _http(base + hits[0]["image"])
    assert status == 200 and image == (photos / "green" / "2.png").read_bytes()
    for bad in ("/api/search/image/99", "/api/search/image/..%2F..%2Fetc%2Fpasswd"):
        assert _http(base + bad)[0] == 404
    assert _http(base + "/api/search?k=0", b"x")[0] == 400
    assert _http(base + "/api/search?k=2", b"not an image")[0] == 415


def test_the_search_page_shows_the_nearest_photos_with_their_similarity(search_server):
    from browser import browser, screenshot
    from test_serve_browser import no_errors_logged, wait_for
    base, photos = search_server
    driver = browser()
    try:
        driver.get(signed_in(base, "/search"))
        wait_for(driver, "document.getElementById('index-info').textContent.includes('15 photos')")
        upload = driver.find_element("id", "upload")
        driver.execute_script("arguments[0].hidden = false;", upload)
        upload.send_keys(str(photos / "blue" / "1.png"))
        wait_for(driver, "document.querySelectorAll('#results .hit').length === 8")
        # The thumbnails arrive after the list: wait until the first has loaded or failed, so
        # the width below says whether it loaded, not how fast.
        wait_for(driver, "document.querySelector('#results .hit img').complete")
        first = driver.execute_script(
            "const h = document.querySelector('#results .hit');"
            "return [h.querySelector('.path').textContent, h.querySelector('.similarity')"
            ".textContent, h.querySelector('img').naturalWidth];")
        assert first[0] == "blue/1.png" and first[1] == "similarity 1" and first[2] == 32
        screenshot(driver, "search.png")
        no_errors_logged(driver)
    finally:
        driver.quit()
