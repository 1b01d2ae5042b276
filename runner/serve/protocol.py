"""Request bodies of the two APIs the service speaks, checked field by field into the run parameters of
`Pipeline.settings`. Every problem is a `BadRequest` naming the field (`param`), answered 400 in OpenAI's
error shape; the pipeline's own validation (the CLI's messages) runs after these checks.

- OpenAI Images API, `POST /v1/images/generations`: `prompt` (required), `model`, `n`, `size` "WxH",
  `response_format` (b64_json), plus the extensions `seed`, `steps`, `guidance`, `negative_prompt`,
  `guidance_rescale` (the official client sends them with `extra_body`).
- AUTOMATIC1111, `POST /sdapi/v1/txt2img`: `prompt`, `negative_prompt`, `seed` (-1: random), `steps`,
  `cfg_scale`, `width`, `height`, `batch_size`, `n_iter`. Its clients send every field the web UI knows
  (styles, sampler_name, eta, override_settings, ...); fields this service has no use for are ignored, as
  the web UI ignores most of them for most samplers. The sampler is the loaded pipeline's (see `info`).
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SEED_LIMIT = 2**63  # the runner's seed range: [0, 2**63)
MAX_PROMPT_CHARS = 20_000

# Fields of OpenAI's images.generate this service accepts but has no use for (they change nothing here).
OPENAI_IGNORED = ("quality", "style", "user", "background", "moderation", "output_compression", "partial_images")
OPENAI_FIELDS = (
    "prompt",
    "model",
    "n",
    "size",
    "response_format",
    "output_format",
    "stream",
    "seed",
    "steps",
    "guidance",
    "guidance_rescale",
    "negative_prompt",
    *OPENAI_IGNORED,
)
RESPONSE_FORMATS = ("b64_json",)


class BadRequest(Exception):
    """A request field is missing or invalid: 400 with OpenAI's error body naming `param`."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Limits:
    """What a request may ask of this service (serve.* settings and the loaded model)."""

    model: str
    multiple: int  # width and height must be multiples of it
    default_width: int
    default_height: int
    max_pixels: int
    max_steps: int
    max_n: int


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(body: Mapping[str, Any], key: str, required: bool) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise BadRequest(f"'{key}' is required", key)
        return None
    if not isinstance(value, str):
        raise BadRequest(f"'{key}' must be a string, got {type(value).__name__}", key)
    if required and not value.strip():
        raise BadRequest(f"'{key}' must not be empty", key)
    if len(value) > MAX_PROMPT_CHARS:
        raise BadRequest(f"'{key}' has {len(value)} characters; at most {MAX_PROMPT_CHARS} are allowed", key)
    return value


def _int_in(body: Mapping[str, Any], key: str, low: int, high: int, default: int | None) -> int | None:
    value = body.get(key)
    if value is None:
        return default
    if not _is_int(value):
        raise BadRequest(f"'{key}'={value!r} must be an integer", key)
    if not low <= value <= high:
        raise BadRequest(f"'{key}'={value} is out of range: allowed {low} to {high}", key)
    return value


def _guidance(body: Mapping[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if not _is_number(value):
        raise BadRequest(f"'{key}'={value!r} must be a number", key)
    try:
        number = float(value)  # an integer of hundreds of digits does not fit a float
    except OverflowError as err:
        raise BadRequest(f"'{key}' is too large to be a number", key) from err
    if not math.isfinite(number):  # Python's JSON reader takes NaN and Infinity (and 1e999 as inf)
        raise BadRequest(f"'{key}'={value} must be a finite number", key)
    if value < 0:
        raise BadRequest(f"'{key}'={value} must be >= 0", key)
    return number


def _seed(body: Mapping[str, Any], key: str, random_marker: int | None) -> int:
    """The request's seed; absent (or the A1111 marker -1): a random one, reported with the images."""
    value = body.get(key)
    if value is None or (random_marker is not None and value == random_marker):
        return secrets.randbelow(2**32)
    if not _is_int(value):
        raise BadRequest(f"'{key}'={value!r} must be an integer", key)
    if not 0 <= value < SEED_LIMIT:
        raise BadRequest(f"'{key}'={value} is out of range: allowed 0 to 2**63-1", key)
    return value


def check_size(width: int, height: int, limits: Limits, param: str, height_param: str | None = None) -> None:
    """`param` names the field of the width (and of the size), `height_param` that of the height if another."""
    m = limits.multiple
    for value, name in ((width, param), (height, height_param or param)):
        if value <= 0 or value % m:
            raise BadRequest(
                f"size {width}x{height}: width and height must be positive multiples of {m} for model={limits.model}",
                name,
            )
    if width * height > limits.max_pixels:
        raise BadRequest(
            f"size {width}x{height} has {width * height} pixels; this service allows at most {limits.max_pixels}",
            param,
        )


def parse_size(value: Any, limits: Limits) -> tuple[int, int]:
    """'WxH' (or 'auto' / absent: the model's default size) -> (width, height)."""
    if value is None or value == "auto":
        check_size(limits.default_width, limits.default_height, limits, "size")
        return limits.default_width, limits.default_height
    match = re.fullmatch(r"(\d{1,5})x(\d{1,5})", value) if isinstance(value, str) else None
    if not match:
        raise BadRequest(f"'size'={value!r} must be 'WIDTHxHEIGHT', e.g. '512x512'", "size")
    width, height = int(match.group(1)), int(match.group(2))
    check_size(width, height, limits, "size")
    return width, height


@dataclass(frozen=True)
class ParsedRequest:
    params: dict[str, Any]  # keyword arguments of Pipeline.settings
    fields: dict[str, str]  # run parameter -> the request field it came from (for error messages)


def parse_openai(body: Any, limits: Limits) -> ParsedRequest:
    if not isinstance(body, Mapping):
        raise BadRequest("the request body must be a JSON object", None)
    unknown = sorted(set(body) - set(OPENAI_FIELDS))
    if unknown:
        raise BadRequest(f"unrecognized request argument(s): {', '.join(unknown)}", unknown[0])
    prompt = _text(body, "prompt", required=True)
    model = body.get("model")
    if model is not None and model != limits.model:
        raise BadRequest(f"model {model!r} is not served here; this service runs {limits.model!r}", "model")
    response_format = body.get("response_format")
    if response_format is not None and response_format not in RESPONSE_FORMATS:
        raise BadRequest(
            f"response_format {response_format!r} is not supported; allowed: {', '.join(RESPONSE_FORMATS)}",
            "response_format",
        )
    if body.get("output_format") not in (None, "png"):
        raise BadRequest(f"output_format {body['output_format']!r} is not supported; allowed: png", "output_format")
    if body.get("stream") not in (None, False):
        raise BadRequest("stream=true is not supported", "stream")
    width, height = parse_size(body.get("size"), limits)
    params = {
        "prompt": prompt,
        "negative_prompt": _text(body, "negative_prompt", required=False),
        "seed": _seed(body, "seed", random_marker=None),
        "steps": _int_in(body, "steps", 1, limits.max_steps, None),
        "guidance": _guidance(body, "guidance"),
        "guidance_rescale": _guidance(body, "guidance_rescale"),
        "width": width,
        "height": height,
        "batch": _int_in(body, "n", 1, limits.max_n, 1),
    }
    fields = {name: name for name in params} | {"width": "size", "height": "size", "batch": "n"}
    return ParsedRequest(params, fields)


def parse_a1111(body: Any, limits: Limits) -> ParsedRequest:
    if not isinstance(body, Mapping):
        raise BadRequest("the request body must be a JSON object", None)
    prompt = _text(body, "prompt", required=True)
    width = _int_in(body, "width", 1, 65536, limits.default_width)
    height = _int_in(body, "height", 1, 65536, limits.default_height)
    check_size(width, height, limits, "width", "height")
    batch_size = _int_in(body, "batch_size", 1, limits.max_n, 1)
    n_iter = _int_in(body, "n_iter", 1, limits.max_n, 1)
    if batch_size * n_iter > limits.max_n:
        raise BadRequest(f"batch_size x n_iter = {batch_size * n_iter} images; at most {limits.max_n}", "n_iter")
    params = {
        "prompt": prompt,
        "negative_prompt": _text(body, "negative_prompt", required=False) or None,
        "seed": _seed(body, "seed", random_marker=-1),
        "steps": _int_in(body, "steps", 1, limits.max_steps, None),
        "guidance": _guidance(body, "cfg_scale"),
        "width": width,
        "height": height,
        "batch": batch_size * n_iter,
    }
    fields = {name: name for name in params} | {"guidance": "cfg_scale", "batch": "batch_size"}
    return ParsedRequest(params, fields)


def param_of_config_error(message: str, fields: Mapping[str, str]) -> str | None:
    """The request field a Pipeline.settings error is about: its messages start with `key=value`."""
    match = re.match(r"(\w+)=", message)
    return fields.get(match.group(1)) if match else None
