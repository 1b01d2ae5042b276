"""Small tensor helpers shared by the stages (written with methods Paddle and PyTorch tensors share)."""

from __future__ import annotations

from typing import Any


def repeat_per_image(x: Any, images_per_prompt: int) -> Any:
    """Repeat each prompt's row `images_per_prompt` times, consecutively (prompt 0, 0, 1, 1, ...).

    Same layout as the stock pipelines' tile + reshape, so batched conditioning lines up with their noise.
    """
    if images_per_prompt == 1:
        return x
    rows = x.shape[0]
    if x.ndim == 3:
        seq = x.shape[1]
        return x.tile([1, images_per_prompt, 1]).reshape([rows * images_per_prompt, seq, -1])
    return x.tile([1, images_per_prompt]).reshape([rows * images_per_prompt, -1])
