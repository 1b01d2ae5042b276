"""The shapes vocabulary (runner/shapes.py) and the quality metric (runner/quality.py) on drawn images."""

from __future__ import annotations

import numpy as np
import pytest

from runner.quality import adherence, adherence_score, psnr, read_image, similarity, ssim
from runner.shapes import (
    COLOURS,
    PHRASINGS,
    SHAPES,
    Scene,
    caption,
    evaluation_prompts,
    parse_prompt,
    random_scene,
    render,
)


def test_captions_use_correct_articles_and_parse_back() -> None:
    scene = Scene("square", "orange", "black")
    assert caption(scene, 0) == "an orange square on a black background"
    assert caption(scene, 1) == "orange square, black background"
    assert caption(Scene("circle", "red", "orange", "small", "left"), 2) == (
        "an orange background with a small red circle, left"
    )
    assert caption(Scene("triangle", "white", "blue", "large"), 0) == "a large white triangle on a blue background"
    rng = np.random.default_rng(0)
    for _ in range(300):
        scene = random_scene(rng, sizes=0.5, positions=0.5)
        for phrasing in range(PHRASINGS):
            assert parse_prompt(caption(scene, phrasing)) == scene


def test_prompts_outside_the_vocabulary_are_not_read() -> None:
    assert parse_prompt("a photo of an astronaut riding a horse on the moon") is None
    assert parse_prompt("a red circle") is None  # no background
    assert parse_prompt("a red circle on a red background") is None  # shape and background alike


def test_bad_scenes_are_refused_with_the_allowed_values() -> None:
    with pytest.raises(ValueError, match="shape 'hexagon' is not one of circle, square, triangle"):
        Scene("hexagon", "red", "blue")
    with pytest.raises(ValueError, match="colour 'teal' is not one of red, green"):
        Scene("circle", "teal", "blue")
    with pytest.raises(ValueError, match="both red"):
        Scene("circle", "red", "red")


def test_every_drawn_scene_reads_back_exactly() -> None:
    """The metric's ground truth: on the training images it is right every time, size and position included."""
    rng = np.random.default_rng(1)
    for _ in range(600):
        scene = random_scene(rng, sizes=0.5, positions=0.5)
        result = adherence(render(scene, 64, rng), scene)
        assert all(result.values()), (scene, result, read_image(render(scene, 64, rng)))


@pytest.mark.parametrize("wrong", ["shape", "colour", "background", "size", "position"])
def test_an_image_of_another_scene_fails_the_changed_attribute(wrong: str) -> None:
    asked = Scene("triangle", "red", "blue", "large", "left")
    others = {
        "shape": Scene("circle", "red", "blue", "large", "left"),
        "colour": Scene("triangle", "yellow", "blue", "large", "left"),
        "background": Scene("triangle", "red", "green", "large", "left"),
        "size": Scene("triangle", "red", "blue", "small", "left"),
        "position": Scene("triangle", "red", "blue", "large", "right"),
    }
    result = adherence(render(others[wrong]), asked)
    assert result == {name: name != wrong for name in result}


def test_a_blank_or_noisy_image_shows_no_shape() -> None:
    blank = np.zeros((64, 64, 3), np.uint8) + np.array([30, 60, 220], np.uint8)
    reading = read_image(blank)
    assert (reading.background, reading.shape, reading.colour) == ("blue", None, None)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    assert adherence(noise, Scene("circle", "red", "blue"))["shape"] is False


def test_adherence_score_counts_per_attribute_and_skips_foreign_prompts() -> None:
    prompts = evaluation_prompts(24)
    scenes = [parse_prompt(p) for p in prompts]
    assert all(scenes) and len(set(prompts)) == 24
    assert {s.shape for s in scenes} == set(SHAPES) and {s.colour for s in scenes} == set(COLOURS)
    images = [render(s) for s in scenes]
    # Swap the shapes of the first 6 images: shape adherence drops to 18/24, colours stay right.
    swapped = [render(Scene(SHAPES[(SHAPES.index(s.shape) + 1) % 3], s.colour, s.background, s.size, s.position))
               for s in scenes[:6]]  # fmt: skip
    score = adherence_score(swapped + images[6:] + [images[0]], [*prompts, "a photo of a cat"])
    assert score["shape"] == 0.75 and score["colour"] == 1.0 and score["background"] == 1.0
    assert (score["images"], score["skipped"]) == (24, 1)
    with pytest.raises(ValueError, match="2 images for 1 prompts"):
        adherence_score(images[:2], prompts[:1])


def test_psnr_and_ssim_against_known_values() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    assert psnr(a, a) == float("inf") and ssim(a, a) == pytest.approx(1.0)
    b = np.clip(a.astype(np.int16) + 5, 0, 255).astype(np.uint8)
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    assert psnr(a, b) == pytest.approx(10 * np.log10(255**2 / mse))
    flat = np.full_like(a, 128)
    assert ssim(a, flat) < 0.05 < ssim(a, b)  # structure lost vs kept
    assert similarity([a, b], [a, a])["psnr_min_db"] == pytest.approx(psnr(b, a), abs=1e-3)
    with pytest.raises(ValueError, match="images differ in shape"):
        psnr(a, a[:32])
