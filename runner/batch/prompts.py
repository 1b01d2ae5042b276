"""Prompt files of mode=batch: read, check every line against the plan (no weights needed), and give each line
its resolved request.

Text files: one prompt per line (blank lines skipped). JSON Lines (`.jsonl`): one object per line with `prompt`
and any of the run parameters a request may set (runner.api.RUN_PARAMETERS). A line without `seed` gets the
run's seed plus its line number minus one, so every prompt draws its own noise and a rerun, or another sharding,
draws the same.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.api import RUN_PARAMETERS, request_settings, settings_key
from runner.errors import ConfigError
from runner.plan import RunPlan
from runner.schema import RunSettings

MAX_ERRORS_SHOWN = 5


@dataclass(frozen=True)
class PromptRequest:
    """One line of the prompts file with its settings, checked: what a worker draws."""

    line: int  # 1-based line number in the file
    settings: RunSettings

    @property
    def images(self) -> int:
        return self.settings.num_images

    @property
    def key(self) -> str:
        """Identity of what this line draws: a finished image counts for a rerun only while it is equal."""
        s = self.settings
        drawn = [s.prompts, s.negative_prompts, s.seed, s.steps, s.guidance, s.guidance_rescale, s.height, s.width,
                 s.images_per_prompt, s.noise]  # fmt: skip
        return hashlib.sha256(json.dumps(drawn).encode("utf-8")).hexdigest()[:16]


def read_prompts(path: Path, plan: RunPlan, run_params: Mapping[str, Any]) -> list[PromptRequest]:
    """Every request of the file, checked; one ConfigError listing the bad lines (the first few) otherwise."""
    label = f"mode.prompts_file={path}"
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the first prompt
    except FileNotFoundError:
        raise ConfigError(f"{label} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{label} cannot be read as UTF-8 text: {err}") from None
    jsonl = path.suffix.lower() == ".jsonl"
    requests, errors = [], []
    # Lines end at "\n" only: str.splitlines would also split inside a prompt at U+2028, form feeds, ...
    for number, raw in enumerate(text.split("\n"), start=1):
        raw = raw.removesuffix("\r")
        if not raw.strip():
            continue
        try:
            params = _line_params(raw, jsonl)
            if params.get("seed") is None:
                params["seed"] = int(run_params.get("seed") or 0) + number - 1
            requests.append(PromptRequest(number, request_settings(plan, run_params, params)))
        except ConfigError as err:
            errors.append((number, f"line {number}: {err.one_line()}"))
    if errors:
        shown = "; ".join(message for _, message in errors[:MAX_ERRORS_SHOWN])
        if len(errors) > MAX_ERRORS_SHOWN:
            shown += f"; and lines {', '.join(str(number) for number, _ in errors[MAX_ERRORS_SHOWN:])}"
        raise ConfigError(f"{label}: {len(errors)} bad line(s): {shown}")
    if not requests:
        raise ConfigError(f"{label} has no prompts")
    return requests


def _line_params(raw: str, jsonl: bool) -> dict[str, Any]:
    if not jsonl:
        return {"prompt": raw.strip()}
    try:
        params = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ConfigError(f"not JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(params, dict):
        raise ConfigError(f"a JSON object is expected, not {type(params).__name__}")
    unknown = sorted(set(params) - set(RUN_PARAMETERS))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(map(repr, unknown))}; a line sets: {', '.join(RUN_PARAMETERS)}")
    if not isinstance(params.get("prompt"), str):
        raise ConfigError(f"prompt={params.get('prompt')!r}: each line needs one prompt, a string")
    if isinstance(params.get("negative_prompt"), list):
        raise ConfigError("negative_prompt: one string per line (each line is one prompt)")
    return params


def plan_batches(requests: Sequence[PromptRequest], max_batch: int) -> list[list[PromptRequest]]:
    """Denoise batches of at most `max_batch` images: requests with equal batch settings, in file order. The
    batches depend on the file and max_batch only, so every number of workers draws the same batches."""
    groups: dict[Any, list[list[PromptRequest]]] = {}
    for request in requests:
        if request.images > max_batch:
            raise ConfigError(
                f"line {request.line}: batch={request.images} images exceed mode.max_batch={max_batch} "
                "(a prompt's images run in one denoise batch)"
            )
        batches = groups.setdefault(settings_key(request.settings), [[]])
        if sum(r.images for r in batches[-1]) + request.images > max_batch:
            batches.append([])
        batches[-1].append(request)
    ordered = [batch for batches in groups.values() for batch in batches if batch]
    return sorted(ordered, key=lambda batch: batch[0].line)
