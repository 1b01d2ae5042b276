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

import fcntl
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from runner.batch.prompts import PromptRequest
from runner.errors import ConfigError
from runner.files import write_atomic, write_json_atomic

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
IDENTITY = "batch.json"
IMAGES = "images"
LOCK = ".lock"  # flock'ed by the run writing the folder


class BatchOutput:
    def __init__(self, folder: Path, identity: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.identity = dict(identity)
        self.entries: dict[tuple[int, int], dict[str, Any]] = {}
        self._lock: IO[str] | None = None

    # ------------------------------------------------------------------ opening (before any weights load)
    def open(self, requests: Sequence[PromptRequest]) -> None:
        """Lock the folder (one run at a time), check that it holds this batch (or no image), and read what is
        finished for `requests` (the prompts file as it is now)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.folder / LOCK, "w")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise ConfigError(f"mode.output_dir={self.folder} is being written by another run; wait for it") from None
        try:
            self.entries = self._read_manifest(requests)
            self._check_identity()
            self._remove_partial_files()
            self._write_manifest()
        except BaseException:  # refused (another batch's folder) or failed: leave the folder as it was
            self._lock.close()
            self._lock = None
            raise

    def _check_identity(self) -> None:
        path = self.folder / IDENTITY
        try:
            previous = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (OSError, ValueError):
            previous = {"unreadable": str(path)}
        previous = previous if isinstance(previous, dict) or previous is None else {"unreadable": str(path)}
        if previous is not None and previous != self.identity and self.entries:
            differ = sorted(key for key in {*previous, *self.identity} if previous.get(key) != self.identity.get(key))
            raise ConfigError(
                f"mode.output_dir={self.folder} holds images of another batch (it differs in "
                f"{', '.join(differ)}): give another mode.output_dir, or remove that folder"
            )
        if previous != self.identity:  # new, or a folder without images (a run that failed before drawing)
            write_json_atomic(path, self.identity)

    def close(self) -> None:
        """Rewrite the manifest with one entry per image, in line order; atomically, so an interrupted rewrite
        leaves the appended manifest. Then release the folder."""
        if self._lock is None:
            return
        try:
            self._write_manifest()
        finally:
            self._lock.close()  # releases the flock
            self._lock = None

    def _read_manifest(self, requests: Sequence[PromptRequest]) -> dict[tuple[int, int], dict[str, Any]]:
        """The finished images of `requests`: entries whose file exists and whose request is the line's as it is
        now. Entries of lines since changed or removed are dropped (their files are redrawn or left unlisted)."""
        path = self.folder / MANIFEST
        entries: dict[tuple[int, int], dict[str, Any]] = {}
        if not path.is_file():
            return entries
        current = {(r.line, index): r.key for r in requests for index in range(r.images)}
        torn = 0
        for raw in path.read_text(encoding="utf-8", errors="replace").split("\n"):
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
                key = (int(entry["line"]), int(entry["index"]))
            except (ValueError, KeyError, TypeError):
                torn += 1  # a run killed while appending this line
                continue
            if current.get(key) == entry.get("request") and (self.folder / str(entry.get("file", ""))).is_file():
                entries[key] = entry
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
        return all((request.line, index) in self.entries for index in range(request.images))

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
