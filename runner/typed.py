"""Config nodes checked against dataclass schemas by OmegaConf, with its errors turned into one-line ConfigErrors.

`typed(Schema, node, prefix)` merges a composed node into `OmegaConf.structured(Schema)`: OmegaConf checks
every type (and converts what converts losslessly: "3" or 3 for an int field, 3 for a float one) and refuses
keys the schema does not declare. Its exceptions carry the key path, the value and the schema class, which is
all a one-line message needs: `steps='two' must be an integer`, `backend=tensorrt has no option 'workspace';
it accepts: ...`. Only checks OmegaConf cannot express (ranges, choices, unions with containers) stay as code
in the callers.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar, Union

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

from runner.errors import ConfigError

T = TypeVar("T")

# What a value of each type must look like, in the words of the error message.
_WANTED = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def to_plain(node: Any) -> Any:
    """Resolve interpolations and return plain Python containers."""
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def typed(schema: type[T], node: Any, prefix: str, owner: str | None = None, noun: str = "option") -> T:
    """`node` (a config node or a plain mapping) as an instance of the dataclass `schema`.

    prefix: the node's key path in the composed config ("backend", "passes.rope_cache"; "" at the top level),
        used to name a bad value. owner: how an unknown-key message names the node ("backend=tensorrt"),
        prefix when None. The node is resolved against the full config first (interpolations such as
        ${model.max_sequence_length} need it), then merged into the schema.
    """
    raw = to_plain(node)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix or 'the config'}={raw!r} must be a mapping of options")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), raw)
        return typing.cast(T, OmegaConf.to_object(merged))
    except ConfigKeyError as exc:
        raise ConfigError(_unknown_key(exc, prefix, owner, noun)) from exc
    except MissingMandatoryValue as exc:
        raise ConfigError(f"{_dotted(prefix, exc.full_key)} is missing") from exc
    except ValidationError as exc:
        raise ConfigError(_wrong_type(schema, exc, prefix)) from exc
    except OmegaConfBaseException as exc:  # anything else OmegaConf refuses: its own words, on one line
        raise ConfigError(f"{prefix or 'the config'}: {_first_line(exc)}") from exc


def schema_defaults(schema: type) -> dict[str, Any]:
    """The defaults a schema declares, as plain data (mandatory fields left out)."""
    return _drop_missing(OmegaConf.to_container(OmegaConf.structured(schema)))


def _drop_missing(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_missing(v) for k, v in value.items() if v != MISSING}
    return value


def _first_line(exc: OmegaConfBaseException) -> str:
    # OmegaConf appends "full_key: ..." and "object_type=..." lines to its messages.
    return str(exc.msg).strip().splitlines()[0]


def _dotted(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix and key else prefix or key


def _unknown_key(exc: ConfigKeyError, prefix: str, owner: str | None, noun: str) -> str:
    parent = str(exc.full_key).rpartition(".")[0]
    subject = _dotted(prefix, parent) if parent else owner or prefix or "the config"
    declared = exc.object_type
    accepted = sorted(f.name for f in dataclasses.fields(declared)) if dataclasses.is_dataclass(declared) else []
    return f"{subject} has no {noun} {exc.key!r}; it accepts: {', '.join(accepted) or 'nothing'}"


def _wrong_type(schema: type, exc: ValidationError, prefix: str) -> str:
    full_key = str(exc.full_key or "")
    wanted = _describe(_field_type(schema, re.findall(r"[^.\[\]]+", full_key))) if full_key else None
    if wanted is None:
        return f"{prefix or 'the config'}: {_first_line(exc)}"
    return f"{_dotted(prefix, full_key)}={to_plain(exc.value)!r} must be {wanted}"


def _field_type(schema: Any, parts: list[str]) -> Any:
    """The declared type at a key path of `schema` (Any where the path leaves the declared types)."""
    tp = schema
    for part in parts:
        tp = _strip_optional(tp)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            tp = typing.get_type_hints(tp).get(part, Any)
        elif origin in (dict, Mapping) and len(args) == 2:
            tp = args[1]
        elif origin is list and args:
            tp = args[0]
        else:
            return Any
    return tp


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        rest = [arg for arg in typing.get_args(tp) if arg is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def _describe(tp: Any) -> str | None:
    tp = _strip_optional(tp)
    if tp in _WANTED:
        return _WANTED[tp]
    origin = typing.get_origin(tp)
    if origin is list:
        return "a list"
    if origin in (dict, Mapping) or dataclasses.is_dataclass(tp):
        return "a mapping"
    return None
