"""The output folder of a batch job, written so that an interrupted run loses at most the batch in flight.

    <output_dir>/batch.json       what draws the images (model, backend, precision, scheduler, passes, noise)
    <output_dir>/images/NNNNNN_II.png   line NNNNNN of the prompts file, its image II
    <output_dir>/manifest.jsonl   one line per finished image (written after its file)
    <output_dir>/report.json      the last run's counts and speed

Each image is written atomically (temporary file, then rename), then its manifest line is appended and synced:
an image counts as finished only once both are there. A run killed mid-append leaves a torn last line, which
the next run drops (and draws that image again, replacing its file). At the start and the end of every run the
manifest is rewritten, atomically, with one entry per image in line order.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.batch.prompts import PromptRequest
from runner.errors import ConfigError
from runner.files import write_atomic, write_json_atomic

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
IDENTITY = "batch.json"
IMAGES = "images"


class BatchOutput:
    def __init__(self, folder: Path, identity: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.identity = dict(identity)
        self.entries: dict[tuple[int, int], dict[str, Any]] = {}

    # ------------------------------------------------------------------ opening (before any weights load)
    def open(self) -> None:
        """Check that the folder holds this batch (or nothing), then read what is finished."""
        path = self.folder / IDENTITY
        if path.is_file():
            previous = json.loads(path.read_text(encoding="utf-8"))
            differ = sorted(key for key in {*previous, *self.identity} if previous.get(key) != self.identity.get(key))
            if differ:
                raise ConfigError(
                    f"mode.output_dir={self.folder} holds images of another batch (it differs in "
                    f"{', '.join(differ)}): give another mode.output_dir, or remove that folder"
                )
        else:
            write_json_atomic(path, self.identity)
        self.entries = self._read_manifest()
        self._remove_partial_files()
        self._write_manifest()

    def close(self) -> None:
        """Rewrite the manifest with one entry per image, in line order (appends leave a redrawn image's older
        entry behind); atomically, so an interrupted rewrite leaves the appended manifest."""
        self._write_manifest()

    def _read_manifest(self) -> dict[tuple[int, int], dict[str, Any]]:
        path = self.folder / MANIFEST
        entries: dict[tuple[int, int], dict[str, Any]] = {}
        if not path.is_file():
            return entries
        torn = 0
        for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(raw)
                key = (int(entry["line"]), int(entry["index"]))
            except (ValueError, KeyError, TypeError):
                torn += 1  # a run killed while appending this line
                continue
            if (self.folder / entry.get("file", "")).is_file():
                entries[key] = entry  # the last entry of an image wins (a line redrawn after its prompt changed)
        if torn:
            log.warning("%s: dropped %d unreadable line(s) (an interrupted write); their images are drawn again",
                        path, torn)  # fmt: skip
        return entries

    def _remove_partial_files(self) -> None:
        for partial in (self.folder / IMAGES).glob(".*.tmp"):  # write_atomic's temporary files
            partial.unlink(missing_ok=True)

    def _write_manifest(self) -> None:
        lines = [json.dumps(self.entries[key]) + "\n" for key in sorted(self.entries)]
        write_atomic(self.folder / MANIFEST, lambda f: f.write("".join(lines).encode("utf-8")))

    # ------------------------------------------------------------------ during the run
    def finished(self, request: PromptRequest) -> bool:
        entries = [self.entries.get((request.line, index)) for index in range(request.images)]
        return all(entry is not None and entry.get("request") == request.key for entry in entries)

    def record(self, request: PromptRequest, index: int, png: bytes) -> dict[str, Any]:
        """Write image `index` of `request`, then its manifest line."""
        name = f"{IMAGES}/{request.line:06d}_{index:02d}.png"
        write_atomic(self.folder / name, lambda f: f.write(png))
        s = request.settings
        entry = {
            "line": request.line,
            "index": index,
            "file": name,
            "prompt": s.prompts[0],
            "negative_prompt": s.negative_prompts[0] if s.negative_prompts else None,
            "seed": s.seed,
            "steps": s.steps,
            "guidance": s.guidance,
            "guidance_rescale": s.guidance_rescale,
            "height": s.height,
            "width": s.width,
            "request": request.key,
        }
        with open(self.folder / MANIFEST, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.entries[(request.line, index)] = entry
        return entry
