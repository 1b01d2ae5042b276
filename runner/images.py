"""PNG output with the generation parameters in text chunks."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from runner.files import write_atomic


def _png_info(metadata: Mapping[str, Any]) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_itxt(key, "" if value is None else str(value))
    return info


def save_png(path: Path, image: np.ndarray, metadata: Mapping[str, Any]) -> None:
    """Save a uint8 [H, W, 3] array as PNG with each metadata entry as an iTXt chunk (atomically)."""
    picture = Image.fromarray(image)
    write_atomic(path, lambda f: picture.save(f, format="PNG", pnginfo=_png_info(metadata)))


def png_bytes(image: np.ndarray, metadata: Mapping[str, Any]) -> bytes:
    """The PNG `save_png` would write, in memory."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", pnginfo=_png_info(metadata))
    return buffer.getvalue()


def read_png_metadata(path: Path) -> dict[str, str]:
    with Image.open(path) as picture:
        return dict(picture.text)
