"""Tests for piggylab.datasets: the embedded tasks, paper-layout loading, loaders and errors, and the
gallery of sample images (piggylab.plots.gallery)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from piggylab import datasets as D
from piggylab import plots
from piggylab.datasets import embedded as E

SMALL = 0.05  # scale for quick tests


@pytest.fixture(autouse=True)
def _no_disk_cache(monkeypatch):
    monkeypatch.setenv("PIGGYLAB_CACHE", "off")
    monkeypatch.delenv("PIGGYLAB_DATA", raising=False)


def _hashes(ds) -> set[str]:
    images, _ = ds.tensors(normalise=False)
    return {hashlib.sha1(x.numpy().tobytes()).hexdigest() for x in images}


# ---------------------------------------------------------------------------- constants


def test_public_constants():
    assert D.EMBEDDED_SOURCE == "glyphs"
    assert len(D.EMBEDDED_TASKS) == 5 and D.EMBEDDED_SOURCE not in D.EMBEDDED_TASKS
    assert D.PAPER_DATASETS == {"cubs": 200, "cars": 196, "flowers": 102, "wikiart": 195, "sketch": 250}
    mirrors = [E._SPECS[n].mirrors for n in D.EMBEDDED_TASKS]
    assert sorted(mirrors) == sorted(D.PAPER_DATASETS), "each target task mirrors a different paper dataset"


def test_fonts_render_the_needed_glyphs():
    fonts = D.glyph_fonts()
    assert 15 <= len(fonts) <= 21
    names = {n for n, _ in fonts}
    assert not names & {"cmex10", "cmsy10", "LastResortHE-Regular"}
    assert len(D.glyph_fonts(E._GREEK)) >= 8 and len(D.glyph_fonts(E._ACCENTS)) >= 8
    # symbol fonts map letters to other shapes: the check (or the curated list) must reject them
    cmsy = str(E._font_dir() / "cmsy10.ttf")
    last = str(E._font_dir() / "LastResortHE-Regular.ttf")
    assert not E._font_renders(last, E._ALNUM)
    assert not E._font_renders(cmsy, E._GREEK)


def test_package_reexports_every_public_name():
    from piggylab.datasets import embedded, loaders, paper, taskdata

    modules = (taskdata, embedded, paper, loaders)
    for public in D.__all__:
        owner = next(m for m in modules if public in vars(m))
        assert getattr(D, public) is getattr(owner, public), public
    assert not hasattr(D, "gallery")  # a figure: piggylab.plots.gallery


def test_task_is_the_keyword_everywhere():
    assert D.embedded_task(task="greek", sizes={"train": 0, "val": 0, "test": 2}).name == "greek"
    assert D.load_data(task="greek", scale=SMALL).name == "greek"
    with pytest.raises(FileNotFoundError):
        D.paper_task(task="cubs", root="/nonexistent")
    assert len(plots.gallery(tasks=["greek"], per_task=1).data) == 1


# ---------------------------------------------------------------------------- embedded tasks


@pytest.mark.parametrize("task", [D.EMBEDDED_SOURCE, *D.EMBEDDED_TASKS])
def test_each_embedded_task_loads(task):
    data = D.embedded_task(task, scale=SMALL)
    assert isinstance(data, D.TaskData) and data.name == task
    assert data.mirrors and data.description
    assert data.num_classes == len(data.classes) == len(E._SPECS[task].classes())
    expected = {k: max(1, round(v * SMALL)) for k, v in E._SPECS[task].sizes.items()}
    assert data.sizes() == expected
    for split in (data.train, data.val, data.test):
        x, y = split[0]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert isinstance(y, int)
        _, labels = split.tensors()
        assert labels.min() >= 0 and labels.max() < data.num_classes
    _, labels = data.train.tensors()
    if len(labels) >= data.num_classes:
        assert len(torch.unique(labels)) == data.num_classes  # balanced labels cover every class


def test_same_seed_same_images_different_seed_different():
    sizes = {"train": 40, "val": 10, "test": 10}
    a = D.embedded_task("greek", seed=3, sizes=sizes)
    E._split_tensors.cache_clear()  # regenerate rather than reuse the in-memory cache
    b = D.embedded_task("greek", seed=3, sizes=sizes)
    c = D.embedded_task("greek", seed=4, sizes=sizes)
    for split in ("train", "val", "test"):
        xa, ya = getattr(a, split).tensors()
        xb, yb = getattr(b, split).tensors()
        xc, _ = getattr(c, split).tensors()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert not torch.equal(xa, xc)
    sa = D.embedded_task("sketch", seed=3, sizes=sizes).test.images
    sb = D.embedded_task("sketch", seed=3, sizes=sizes).test.images
    sc = D.embedded_task("sketch", seed=4, sizes=sizes).test.images
    assert torch.equal(sa, sb) and not torch.equal(sa, sc)


@pytest.mark.parametrize("task", ["glyphs", "fonts", "sketch"])
def test_split_sizes_and_disjointness(task):
    sizes = {"train": 120, "val": 30, "test": 50}
    data = D.embedded_task(task, seed=1, sizes=sizes)
    assert data.sizes() == sizes
    tr, va, te = _hashes(data.train), _hashes(data.val), _hashes(data.test)
    assert not (tr & va) and not (tr & te) and not (va & te)


def test_sketch_test_split_does_not_depend_on_train_size():
    a = D.embedded_task("sketch", sizes={"train": 100, "val": 20, "test": 30})
    b = D.embedded_task("sketch", sizes={"train": 300, "val": 20, "test": 30})
    assert torch.equal(a.test.images, b.test.images)
    with pytest.raises(ValueError, match="5000"):
        D.embedded_task("sketch", scale=2.0)


def test_sizes_validation():
    with pytest.raises(ValueError, match="unknown split"):
        D.embedded_task("greek", sizes={"training": 10})
    with pytest.raises(ValueError, match="non-negative"):
        D.embedded_task("greek", sizes={"train": -1})
    with pytest.raises(ValueError, match="scale"):
        D.embedded_task("greek", scale=0)
    data = D.embedded_task("greek", sizes={"train": 0, "val": 0, "test": 5})
    assert data.sizes() == {"train": 0, "val": 0, "test": 5}


def test_normalisation_constants_match_the_source_task():
    data = D.embedded_task("glyphs", scale=SMALL)
    mean, std = D.channel_stats(data.train.images)
    np.testing.assert_allclose(mean, D.GLYPHS_MEAN, atol=0.02)
    np.testing.assert_allclose(std, D.GLYPHS_STD, atol=0.02)
    x, _ = data.train.tensors()
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1) < 0.1
    np.testing.assert_allclose(data.train.denormalise(x) * 255, data.train.images.float(), atol=0.01)


def test_augmentation_is_a_small_shift_without_flip():
    data = D.embedded_task("glyphs", sizes={"train": 8, "val": 1, "test": 1})
    ds = data.train
    x, _ = ds.tensors()
    p = ds.pad
    centred, _ = ds[(0, p, p)]
    assert torch.equal(centred, x[0])
    shifted, _ = ds[(0, p + 2, p - 1)]  # content moves up by 2 and right by 1
    assert torch.equal(shifted[:, : 32 - 2, 1:], x[0][:, 2:, : 32 - 1])
    aug = ds[0][0]
    assert aug.shape == (3, 32, 32)
    # the val/test splits are never augmented
    assert not data.val.augment and not data.test.augment and ds.augment


def test_make_loaders_seeded():
    data = D.embedded_task("greek", sizes={"train": 100, "val": 30, "test": 40})
    train1, val, test = D.make_loaders(data, 16, seed=5)
    train2, _, _ = D.make_loaders(data, 16, seed=5)
    train3, _, _ = D.make_loaders(data, 16, seed=6)
    (x1, y1), (x2, y2), (x3, _) = next(iter(train1)), next(iter(train2)), next(iter(train3))
    assert x1.shape == (16, 3, 32, 32) and y1.dtype == torch.int64
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)
    assert sum(len(y) for _, y in train1) == 100
    vy = torch.cat([y for _, y in val])
    assert torch.equal(vy, data.val.tensors()[1])  # in order
    vx = torch.cat([x for x, _ in val])
    assert torch.equal(vx, data.val.tensors()[0])  # un-augmented
    assert sum(len(y) for _, y in test) == 40


def test_disk_cache_roundtrip_without_pickle(tmp_path, monkeypatch):
    x = np.random.default_rng(0).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    y = np.arange(4, dtype=np.int64)
    path = tmp_path / "sub" / "t.npz"
    E._write_cache(path, x, y)
    assert path.is_file() and not list(path.parent.glob("*.tmp*"))
    with np.load(path, allow_pickle=False) as z:
        assert set(z.files) == {"images", "labels"}
    got = E._read_cache(path, 4)
    assert got is not None and np.array_equal(got[0], x) and np.array_equal(got[1], y)
    assert E._read_cache(path, 5) is None  # wrong size: regenerate
    monkeypatch.setenv("PIGGYLAB_CACHE", str(tmp_path / "c"))
    assert E._cache_dir() == tmp_path / "c"
    monkeypatch.setenv("PIGGYLAB_CACHE", "off")
    assert E._cache_dir() is None


def test_gallery_one_image_per_sample():
    go = pytest.importorskip("plotly.graph_objects")
    fig = plots.gallery(["glyphs", "sketch", "textured"], per_task=3, seed=1)
    assert isinstance(fig, go.Figure)
    images = [t for t in fig.data if t.type == "image"]
    assert len(images) == 9 == len(fig.data)
    text = " ".join(a.text for a in fig.layout.annotations)
    assert "sketch (sketch)" in text and "textured (cars)" in text
    z = np.asarray(images[0].z)
    assert z.shape == (32, 32, 3) and z.dtype == np.uint8
    with pytest.raises(ValueError, match="paper dataset"):
        plots.gallery(["cubs"])


def test_task_table():
    table = D.task_table()
    assert list(table.index) == [D.EMBEDDED_SOURCE, *D.EMBEDDED_TASKS]
    assert table.loc["glyphs", "classes"] == 62 and table.loc["sketch", "classes"] == 10


# ---------------------------------------------------------------------------- paper layout


def _image_tree(root: Path, task: str = "cubs", classes=("a", "b", "c"), n_train: int = 4, n_test: int = 2) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for c in classes:
            d = root / task / split / c
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{c}{i}.jpg")
    return root


def test_paper_task_reads_imagefolder_layout(tmp_path):
    root = _image_tree(tmp_path)
    with pytest.warns(UserWarning, match="200"):
        data = D.paper_task("cubs", root, val_fraction=0.25, seed=0)
    assert data.classes == ["a", "b", "c"] and data.num_classes == 3 and data.mirrors == "cubs"
    assert data.sizes() == {"train": 9, "val": 3, "test": 6}
    x, y = data.train[0]
    assert x.shape == (3, 224, 224) and 0 <= y < 3
    x, _ = data.val[0]
    assert x.shape == (3, 224, 224)
    assert {data.val.dataset.targets[i] for i in data.val.indices} == {0, 1, 2}  # stratified
    assert not set(data.train.indices) & set(data.val.indices)
    with pytest.warns(UserWarning):
        again = D.paper_task("cubs", root, val_fraction=0.25, seed=0)
    assert again.val.indices == data.val.indices


def test_paper_task_weights_transforms_and_load_data(tmp_path, monkeypatch):
    from torchvision.transforms._presets import ImageClassification

    root = _image_tree(tmp_path, "wikiart")
    preset = ImageClassification(crop_size=64, resize_size=72, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    with pytest.warns(UserWarning):
        data = D.paper_task("wikiart", root, weights_transforms=preset)
    assert data.test[0][0].shape == (3, 64, 64) and data.mean == (0.5, 0.5, 0.5) and data.image_size == 64
    with pytest.warns(UserWarning):
        loaded = D.load_data("wikiart", root=root)
    assert loaded.num_classes == 3 and loaded.train[0][0].shape == (3, 224, 224)
    monkeypatch.setenv("PIGGYLAB_DATA", str(root))
    with pytest.warns(UserWarning):
        assert D.load_data("wikiart").num_classes == 3
    train, val, test = D.make_loaders(loaded, 4, seed=0)
    x, y = next(iter(train))
    assert x.shape == (4, 3, 224, 224)
    assert D.load_data("greek", scale=SMALL).name == "greek"


def test_load_data_sketch_means_paper_only_with_root(tmp_path):
    root = _image_tree(tmp_path, "sketch", n_train=4, n_test=2)
    assert isinstance(D.load_data("sketch", scale=SMALL).train, D.ArrayDataset)  # the embedded digits
    with pytest.warns(UserWarning, match="250"):
        paper = D.load_data("sketch", root=root, scale=0.5)
    assert paper.classes == ["a", "b", "c"] and paper.image_size == 224
    assert paper.sizes() == {"train": 6, "val": 1, "test": 3}  # 12 images: 11 train + 1 val, then halved


def test_paper_task_accepts_reference_folder_names(tmp_path):
    root = _image_tree(tmp_path, "cubs_cropped", n_train=2, n_test=1)
    with pytest.warns(UserWarning):
        assert D.paper_task("cubs", root).num_classes == 3


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("fn", [lambda: D.embedded_task("imagenet"), lambda: D.load_data("imagenet"),
                                lambda: D.paper_task("imagenet", "."), lambda: plots.gallery(["imagenet"])])
def test_unknown_name_lists_known_names(fn):
    with pytest.raises(ValueError) as info:
        fn()
    message = str(info.value)
    assert message.startswith("unknown task 'imagenet'")
    for task in [D.EMBEDDED_SOURCE, *D.EMBEDDED_TASKS, *D.PAPER_DATASETS]:
        assert task in message


def test_missing_root_shows_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train/<class>/<image>"):
        D.paper_task("cubs", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"cubs/train/<class>/<image>"):
        D.paper_task("cubs", tmp_path)  # root exists, dataset folder does not
    with pytest.raises(FileNotFoundError, match="flowers-102"):
        D.paper_task("flowers", tmp_path)  # no ImageFolder layout and no torchvision layout
    with pytest.raises(FileNotFoundError, match="PIGGYLAB_DATA"):
        D.load_data("cubs")  # a paper dataset without a root
    (tmp_path / "cars" / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="test"):
        D.paper_task("cars", tmp_path)


def test_corrupt_image_names_the_file(tmp_path):
    root = _image_tree(tmp_path, "flowers", n_train=2, n_test=1)
    bad = root / "flowers" / "test" / "b" / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.warns(UserWarning):
        data = D.paper_task("flowers", root)
    with pytest.raises(OSError, match=r"cannot read image .*broken\.jpg"):
        for i in range(len(data.test)):
            data.test[i]
