"""The shapes world: a vocabulary of coloured shapes on coloured backgrounds, its captions and its images.

The shipped `shapes_*` models are trained on images drawn here (scripts/train_shapes.py), and the quality
metric (runner/quality.py) reads prompts with `parse_prompt` and judges images against the same palette
and geometry. Numpy only: the training script, both engines and the metric share it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle")
# Saturated, far-apart RGB values, so a colour survives a lossy decoder and is named back unambiguously.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 190),
    "orange": (245, 140, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLOURS = tuple(PALETTE)
SIZES = ("small", "large")  # no size word: medium
POSITIONS = ("left", "right", "top", "bottom", "center")  # no position word: anywhere
# Radius (half the side of a square, half the base of a triangle) as a fraction of the image side.
RADIUS = {"small": 0.14, None: 0.22, "large": 0.3}
# Centre of each position word, as fractions of (width, height).
ANCHORS = {"left": (0.28, 0.5), "right": (0.72, 0.5), "top": (0.5, 0.28), "bottom": (0.5, 0.72), "center": (0.5, 0.5)}
MARGIN = 0.04  # shapes stay this far (fraction of the side) from the border, which is background only

_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class Scene:
    """One image of the vocabulary: a `colour` `shape` on a `background`, with optional size and position."""

    shape: str
    colour: str
    background: str
    size: str | None = None
    position: str | None = None

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape {self.shape!r} is not one of {', '.join(SHAPES)}")
        for name in (self.colour, self.background):
            if name not in PALETTE:
                raise ValueError(f"colour {name!r} is not one of {', '.join(COLOURS)}")
        if self.colour == self.background:
            raise ValueError(f"the shape and the background are both {self.colour}")
        if self.size not in (None, *SIZES):
            raise ValueError(f"size {self.size!r} is not one of {', '.join(SIZES)}")
        if self.position not in (None, *POSITIONS):
            raise ValueError(f"position {self.position!r} is not one of {', '.join(POSITIONS)}")


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(scene: Scene, phrasing: int = 0) -> str:
    """One of three phrasings of a scene, with correct articles.

    0: "a small red circle on a blue background, left"; 1: "small red circle, blue background, left";
    2: "a blue background with a small red circle, left".
    """
    thing = " ".join(w for w in (scene.size, scene.colour, scene.shape) if w)
    ground = f"{scene.background} background"
    where = f", {scene.position}" if scene.position else ""
    if phrasing == 0:
        return f"{article(thing)} {thing} on {article(ground)} {ground}{where}"
    if phrasing == 1:
        return f"{thing}, {ground}{where}"
    if phrasing == 2:
        return f"{article(ground)} {ground} with {article(thing)} {thing}{where}"
    raise ValueError(f"phrasing {phrasing!r} is not 0, 1 or 2")


PHRASINGS = 3


def parse_prompt(prompt: str) -> Scene | None:
    """The scene a prompt asks for, or None when it does not name a shape, its colour and a background.

    The background colour is the colour word right before "background"; the shape's colour is the colour
    word right before the shape (a size word may sit between them).
    """
    words = _WORD.findall(prompt.lower())
    shape = next((w for w in words if w in SHAPES), None)
    if shape is None or "background" not in words:
        return None
    at = words.index("background")
    background = words[at - 1] if at > 0 and words[at - 1] in PALETTE else None
    i = words.index(shape) - 1
    size = None
    if i >= 0 and words[i] in SIZES:
        size, i = words[i], i - 1
    colour = words[i] if i >= 0 and words[i] in PALETTE else None
    if size is None and i - 1 >= 0 and words[i - 1] in SIZES:
        size = words[i - 1]
    if not colour or not background or colour == background:
        return None
    position = next((w for w in words if w in POSITIONS), None)
    return Scene(shape, colour, background, size, position)


def random_scene(rng: np.random.Generator, sizes: float = 0.4, positions: float = 0.4) -> Scene:
    """A uniformly drawn scene; a size word with probability `sizes`, a position word with `positions`."""
    colour, background = rng.choice(len(COLOURS), size=2, replace=False)
    size = SIZES[rng.integers(len(SIZES))] if rng.random() < sizes else None
    position = POSITIONS[rng.integers(len(POSITIONS))] if rng.random() < positions else None
    return Scene(SHAPES[rng.integers(len(SHAPES))], COLOURS[colour], COLOURS[background], size, position)


def shape_mask(shape: str, cx: float, cy: float, radius: float, side: int, supersample: int = 4) -> np.ndarray:
    """Coverage in [0, 1] of each pixel of a side x side image (anti-aliased by supersampling)."""
    n = side * supersample
    coords = (np.arange(n) + 0.5) / supersample
    y, x = np.meshgrid(coords, coords, indexing="ij")
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= radius**2
    elif shape == "square":
        half = radius * 0.9  # about the circle's area, so size words mean the same for every shape
        inside = (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
    elif shape == "triangle":
        # Upright isosceles, apex on top; base 2.4r wide and 2.2r tall, centred on its bounding box.
        top, bottom, half_base = cy - 1.1 * radius, cy + 1.1 * radius, 1.2 * radius
        frac = np.clip((y - top) / (bottom - top), 0, None)
        inside = (y >= top) & (y <= bottom) & (np.abs(x - cx) <= half_base * frac)
    else:
        raise ValueError(f"shape {shape!r} is not one of {', '.join(SHAPES)}")
    return inside.reshape(side, supersample, side, supersample).mean(axis=(1, 3))


def placement(scene: Scene, side: int, rng: np.random.Generator | None) -> tuple[float, float, float]:
    """(cx, cy, radius) in pixels: the position word's anchor (jittered), or anywhere that fits."""
    rng = rng or np.random.default_rng(0)
    radius = RADIUS[scene.size] * side * (1 + 0.1 * (rng.random() - 0.5))
    reach = radius * 1.2 + MARGIN * side  # the triangle reaches 1.2r sideways, 1.1r up and down
    if scene.position is None:
        cx, cy = (rng.uniform(reach, side - reach) for _ in range(2))
    else:
        ax, ay = ANCHORS[scene.position]
        jitter = 0.04 * side
        cx = float(np.clip(ax * side + rng.uniform(-jitter, jitter), reach, side - reach))
        cy = float(np.clip(ay * side + rng.uniform(-jitter, jitter), reach, side - reach))
    return cx, cy, radius


def render(scene: Scene, side: int = 64, rng: np.random.Generator | None = None) -> np.ndarray:
    """The scene as a side x side x 3 uint8 image; `rng` places the shape (None: a fixed placement)."""
    cx, cy, radius = placement(scene, side, rng)
    cover = shape_mask(scene.shape, cx, cy, radius, side)[..., None]
    fg = np.asarray(PALETTE[scene.colour], dtype=np.float64)
    bg = np.asarray(PALETTE[scene.background], dtype=np.float64)
    return np.round(cover * fg + (1 - cover) * bg).astype(np.uint8)


def evaluation_prompts(count: int = 24, seed: int = 0) -> list[str]:
    """A fixed, balanced prompt set: every shape and every colour as often as `count` allows, phrasing 0.

    The first prompts of the set have neither size nor position words; later ones add them, as users would.
    """
    rng = np.random.default_rng(seed)
    prompts = []
    for i in range(count):
        shape = SHAPES[i % len(SHAPES)]
        colour = COLOURS[i % len(COLOURS)]
        others = [c for c in COLOURS if c != colour]
        background = others[int(rng.integers(len(others)))]
        size = SIZES[i % 2] if i % 4 == 3 else None
        position = POSITIONS[i % len(POSITIONS)] if i % 3 == 2 else None
        prompts.append(caption(Scene(shape, colour, background, size, position)))
    return prompts
