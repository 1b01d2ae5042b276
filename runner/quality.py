"""Image quality, engine-neutral: prompt adherence for the shapes vocabulary, PSNR and SSIM against a reference.

Adherence is read geometrically, with no learned classifier: each pixel is named by its nearest palette
colour; the border gives the background (shapes keep clear of it, runner/shapes.py), the most common other
colour is the shape, whose outline is told apart by how much of its bounding box it fills (square ~1,
circle ~0.79) and by its width near the top against near the bottom (a triangle's apex).
A lossy optimization is judged by these numbers against its unoptimized run, never by eye.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from runner.shapes import PALETTE, Scene, parse_prompt

_NAMES = tuple(PALETTE)
_RGB = np.asarray([PALETTE[n] for n in _NAMES], dtype=np.float64)
MIN_AREA = 0.01  # a shape covers at least this fraction of the image; less reads as "no shape"
CORE_ATTRIBUTES = ("colour", "shape", "background")
OPTIONAL_ATTRIBUTES = ("size", "position")


@dataclass(frozen=True)
class Reading:
    """What an image shows, in the shapes vocabulary (None: no shape found)."""

    background: str
    colour: str | None
    shape: str | None
    fill: float  # shape area / bounding-box area
    taper: float  # mean width in the top quarter of the box / in the bottom quarter
    centre: tuple[float, float] | None  # (x, y) of the bounding box's centre, as fractions of the image
    radius: float | None  # sqrt(area / 3) as a fraction of the side (a shape's RADIUS in runner/shapes.py)


def _opening(mask: np.ndarray) -> np.ndarray:
    """3x3 erosion then dilation: drops specks and one-pixel threads, keeps any shape wider than 3 pixels."""

    def window(m: np.ndarray, reduce) -> np.ndarray:
        padded = np.pad(m, 1, mode="edge")
        h, w = m.shape
        stack = [padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)]
        return reduce(np.stack(stack), axis=0)

    return window(window(mask, np.min), np.max)


def read_image(image: np.ndarray) -> Reading:
    """Read an H x W x 3 uint8 (or 0..255 float) image.

    Every pixel is named by its nearest palette colour; the border's most common name is the background,
    the most common other name (after dropping specks and one-pixel rings where two colours blend) is the
    shape's colour, and the pixels of that name are the shape. Naming pixels, rather than thresholding
    their distance to the background, keeps a background that darkens towards the middle, or a halo of
    the background's colour around the shape, from being read as part of the shape.
    """
    img = np.asarray(image, dtype=np.float64)[..., :3]
    h, w, _ = img.shape
    names = np.argmin(((img[:, :, None, :] - _RGB) ** 2).sum(axis=-1), axis=-1)
    border = np.concatenate([names[:2].ravel(), names[-2:].ravel(), names[:, :2].ravel(), names[:, -2:].ravel()])
    bg = int(np.bincount(border, minlength=len(_NAMES)).argmax())
    masks = {i: _opening(names == i) for i in range(len(_NAMES)) if i != bg}
    background = _NAMES[bg]
    fg = max(masks, key=lambda i: int(masks[i].sum()))
    mask = masks[fg]
    area = int(mask.sum())
    if area < MIN_AREA * h * w:
        return Reading(background, None, None, 0.0, 0.0, None, None)
    ys, xs = np.nonzero(mask)
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box = mask[top:bottom, left:right]
    fill = area / box.size
    quarter = max(1, box.shape[0] // 4)
    widths = box.sum(axis=1).astype(np.float64)
    taper = float(widths[:quarter].mean() / max(widths[-quarter:].mean(), 1e-9))
    if taper < 0.6:
        shape = "triangle"
    elif fill > 0.89:
        shape = "square"
    else:
        shape = "circle"
    centre = ((left + right) / 2 / w, (top + bottom) / 2 / h)  # the box's: a triangle's centroid sits low
    radius = float(np.sqrt(area / 3.0)) / np.sqrt(h * w)
    return Reading(background, _NAMES[fg], shape, float(fill), taper, centre, radius)


def position_matches(word: str, centre: tuple[float, float]) -> bool:
    """The shape's centre lies on `word`'s side of the image (center: within 0.1 of the middle both ways).

    Sides, not anchors: a large shape asked to sit left cannot reach the left anchor without leaving the frame.
    """
    x, y = centre
    tests = {"left": x < 0.45, "right": x > 0.55, "top": y < 0.45, "bottom": y > 0.55,
             "center": abs(x - 0.5) < 0.1 and abs(y - 0.5) < 0.1}  # fmt: skip
    return tests[word]


def size_matches(word: str | None, radius: float) -> bool:
    found = "small" if radius < 0.18 else "large" if radius > 0.26 else None
    return found == word


def adherence(image: np.ndarray, scene: Scene) -> dict[str, bool]:
    """Per attribute of `scene`, whether the image shows it; size and position only when the scene names them."""
    reading = read_image(image)
    result = {
        "colour": reading.colour == scene.colour,
        "shape": reading.shape == scene.shape,
        "background": reading.background == scene.background,
    }
    if scene.size is not None:
        result["size"] = reading.radius is not None and size_matches(scene.size, reading.radius)
    if scene.position is not None:
        result["position"] = reading.centre is not None and position_matches(scene.position, reading.centre)
    return result


def adherence_score(images: Sequence[np.ndarray], prompts: Sequence[str]) -> dict[str, float | int]:
    """Fraction of images showing each attribute their prompt asks for, over prompts of the vocabulary.

    Prompts outside the vocabulary (parse_prompt gives None) are skipped and counted in `skipped`.
    """
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
    hits: dict[str, list[bool]] = {name: [] for name in CORE_ATTRIBUTES + OPTIONAL_ATTRIBUTES}
    skipped = 0
    for image, prompt in zip(images, prompts):
        scene = parse_prompt(prompt)
        if scene is None:
            skipped += 1
            continue
        for name, ok in adherence(image, scene).items():
            hits[name].append(ok)
    score: dict[str, float | int] = {name: round(float(np.mean(v)), 4) for name, v in hits.items() if v}
    score["images"] = len(images) - skipped
    score["skipped"] = skipped
    return score


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8-range images (inf when equal)."""
    a, b = _same_shape(image, reference)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _gaussian_blur(x: np.ndarray, sigma: float = 1.5, size: int = 11) -> np.ndarray:
    """Valid-mode separable Gaussian filter over the first two axes."""
    offsets = np.arange(size) - size // 2
    kernel = np.exp(-(offsets**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    windows = np.lib.stride_tricks.sliding_window_view(x, size, axis=0)
    x = windows @ kernel
    windows = np.lib.stride_tricks.sliding_window_view(x, size, axis=1)
    return windows @ kernel


def ssim(image: np.ndarray, reference: np.ndarray) -> float:
    """Structural similarity (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5) of the luma, in [-1, 1]."""
    a, b = _same_shape(image, reference)
    luma = np.array([0.299, 0.587, 0.114])
    x, y = a[..., :3] @ luma, b[..., :3] @ luma
    if min(x.shape) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels, got {x.shape[1]}x{x.shape[0]}")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _gaussian_blur(x), _gaussian_blur(y)
    vx = _gaussian_blur(x * x) - mx**2
    vy = _gaussian_blur(y * y) - my**2
    cov = _gaussian_blur(x * y) - mx * my
    value = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(value.mean())


def _same_shape(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    return a, b


def similarity(images: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> dict[str, float]:
    """Mean and worst PSNR (dB; inf values count as 100) and mean SSIM of image pairs."""
    values = [min(psnr(a, b), 100.0) for a, b in zip(images, references, strict=True)]
    ssims = [ssim(a, b) for a, b in zip(images, references, strict=True)]
    return {
        "psnr_mean_db": round(float(np.mean(values)), 3),
        "psnr_min_db": round(float(np.min(values)), 3),
        "ssim_mean": round(float(np.mean(ssims)), 5),
    }
