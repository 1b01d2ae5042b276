"""PNG output with the generation parameters in text chunks."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from runner.files import write_atomic


def png_bytes(image: np.ndarray, metadata: Mapping[str, Any]) -> bytes:
    """A uint8 [H, W, 3] array encoded as PNG, with each metadata entry as an iTXt chunk."""
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_itxt(key, "" if value is None else str(value))
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_png(path: Path, image: np.ndarray, metadata: Mapping[str, Any]) -> None:
    """Write `png_bytes(image, metadata)` to `path` atomically."""
    encoded = png_bytes(image, metadata)
    write_atomic(path, lambda f: f.write(encoded))


def read_png_metadata(path: Path) -> dict[str, str]:
    with Image.open(path) as picture:
        return dict(picture.text)
