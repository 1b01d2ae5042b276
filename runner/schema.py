"""Typed views of the composed Hydra config, validated once before anything loads.

YAML only sets values; these dataclasses give each group a typed shape and turn every bad value into
a one-line `ConfigError` that names the value and what is allowed. Nothing here touches devices,
environment variables or engines: side effects belong to the runner.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.errors import ConfigError

NOISE_SOURCES = ("engine", "numpy")
RUN_KEYS = ("prompt", "negative_prompt", "seed", "steps", "guidance", "height", "width", "batch", "noise", "quiet")
DTYPES = ("float32", "float16", "bfloat16")


def to_plain(node: Any) -> Any:
    """Resolve interpolations and return plain Python containers."""
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


@dataclass(frozen=True)
class ComponentSpec:
    """One model component: its registered type, its folder in a weights directory, its architecture."""

    role: str
    type: str
    path: str | None
    config: dict[str, Any]
    options: dict[str, Any]


@dataclass(frozen=True)
class StageSpec:
    name: str
    type: str
    params: dict[str, Any]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    weights: str
    pipeline_classes: tuple[str, ...]
    resolution_multiple: int
    run_defaults: dict[str, Any]
    scheduler_kind: str
    scheduler_class: str
    scheduler_config: dict[str, Any]
    components: dict[str, ComponentSpec]
    stages: tuple[StageSpec, ...]
    guidance_used: bool = True
    init_seed: int = 0
    max_sequence_length: int | None = None  # T5 tokens, for models with a T5 encoder

    @property
    def uses_random_weights(self) -> bool:
        return self.weights == "random"


@dataclass(frozen=True)
class SchedulerSpec:
    name: str
    kind: str | None
    class_name: str | None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BackendSpec:
    name: str
    engine: str
    device: str
    options: dict[str, Any]


@dataclass(frozen=True)
class PrecisionSpec:
    name: str
    dtype: str


@dataclass(frozen=True)
class RunSettings:
    """The resolved request: model defaults filled in, every value checked."""

    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...] | None
    images_per_prompt: int
    height: int
    width: int
    steps: int
    guidance: float
    seed: int
    noise: str
    quiet: bool

    @property
    def num_images(self) -> int:
        return len(self.prompts) * self.images_per_prompt


def _require(mapping: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in mapping or mapping[key] is None:
        raise ConfigError(f"{where}.{key} is missing")
    return mapping[key]


def parse_model(node: Any) -> ModelSpec:
    raw = to_plain(node)
    name = _require(raw, "name", "model")
    where = f"model {name!r}"
    components = {}
    for role, comp in _require(raw, "components", "model").items():
        comp = dict(comp)
        ctype = _require(comp, "type", f"{where} component {role}")
        path = comp.pop("path", role)
        config = comp.pop("config", None) or {}
        comp.pop("type")
        components[role] = ComponentSpec(role=role, type=ctype, path=path, config=config, options=comp)
    stages = []
    for i, stage in enumerate(_require(raw, "stages", "model")):
        stage = dict(stage)
        sname = stage.pop("name", None)
        stype = stage.pop("type", None)
        if not sname or not stype:
            raise ConfigError(f"{where}: stage #{i} needs both 'name' and 'type', got {stage}")
        stages.append(StageSpec(name=sname, type=stype, params=stage))
    scheduler = _require(raw, "scheduler", "model")
    multiple = int(raw.get("resolution_multiple", 8))
    return ModelSpec(
        name=name,
        family=_require(raw, "family", "model"),
        weights=str(raw.get("weights", "random")),
        pipeline_classes=tuple(_require(raw, "pipeline_classes", "model")),
        resolution_multiple=multiple,
        run_defaults=dict(_require(raw, "run_defaults", "model")),
        scheduler_kind=_require(scheduler, "kind", "model.scheduler"),
        scheduler_class=_require(scheduler, "class_name", "model.scheduler"),
        scheduler_config=dict(scheduler.get("config") or {}),
        components=components,
        stages=tuple(stages),
        guidance_used=bool(raw.get("guidance_used", True)),
        init_seed=int(raw.get("init_seed", 0)),
        max_sequence_length=raw.get("max_sequence_length"),
    )


def parse_scheduler(node: Any) -> SchedulerSpec:
    raw = to_plain(node)
    return SchedulerSpec(
        name=_require(raw, "name", "scheduler"),
        kind=raw.get("kind"),
        class_name=raw.get("class_name"),
        options=dict(raw.get("options") or {}),
    )


def parse_backend(node: Any) -> BackendSpec:
    raw = dict(to_plain(node))
    name = _require(raw, "name", "backend")
    engine = _require(raw, "engine", "backend")
    device = str(raw.pop("device", "auto"))
    options = {k: v for k, v in raw.items() if k not in ("name", "engine")}
    return BackendSpec(name=name, engine=engine, device=device, options=options)


def parse_precision(node: Any) -> PrecisionSpec:
    raw = to_plain(node)
    dtype = _require(raw, "dtype", "precision")
    if dtype not in DTYPES:
        raise ConfigError(f"precision.dtype={dtype!r} is not one of {', '.join(DTYPES)}")
    return PrecisionSpec(name=_require(raw, "name", "precision"), dtype=dtype)


def _int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}={value!r} must be an integer")
    return value


def _prompts(value: Any, key: str, allow_none: bool) -> tuple[str, ...] | None:
    if value is None and allow_none:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{key}={value!r} must be a string or a non-empty list of strings")


def parse_settings(cfg: Mapping[str, Any], model: ModelSpec) -> RunSettings:
    """Fill run parameters left at null from the model's defaults and check every value."""
    cfg = {key: to_plain(cfg[key]) for key in RUN_KEYS if key in cfg}
    d = model.run_defaults

    def pick(key: str) -> Any:
        value = cfg.get(key)
        return d.get(key) if value is None else value

    height = _int("height", pick("height"))
    width = _int("width", pick("width"))
    m = model.resolution_multiple
    for key, value in (("height", height), ("width", width)):
        if value <= 0 or value % m:
            raise ConfigError(f"{key}={value} must be a positive multiple of {m} for model={model.name}")
    steps = _int("steps", pick("steps"))
    if steps < 1:
        raise ConfigError(f"steps={steps} must be >= 1")
    batch = _int("batch", cfg.get("batch", 1))
    if batch < 1:
        raise ConfigError(f"batch={batch} must be >= 1 (images per prompt)")
    guidance = pick("guidance")
    if isinstance(guidance, bool) or not isinstance(guidance, int | float):
        raise ConfigError(f"guidance={guidance!r} must be a number")
    if guidance < 0:
        raise ConfigError(f"guidance={guidance} must be >= 0")
    seed = _int("seed", cfg.get("seed", 0))
    if not 0 <= seed < 2**63:
        raise ConfigError(f"seed={seed} must be in [0, 2**63)")
    noise = cfg.get("noise", "engine")
    if noise not in NOISE_SOURCES:
        raise ConfigError(f"noise={noise!r} is not one of {', '.join(NOISE_SOURCES)}")
    prompts = _prompts(cfg.get("prompt"), "prompt", allow_none=False)
    negatives = _prompts(cfg.get("negative_prompt"), "negative_prompt", allow_none=True)
    if negatives is not None and len(negatives) not in (1, len(prompts)):
        raise ConfigError(
            f"negative_prompt has {len(negatives)} entries but prompt has {len(prompts)}; give one or the same number"
        )
    if negatives is not None and len(negatives) == 1 and len(prompts) > 1:
        negatives = negatives * len(prompts)
    return RunSettings(
        prompts=prompts,
        negative_prompts=negatives,
        images_per_prompt=batch,
        height=height,
        width=width,
        steps=steps,
        guidance=float(guidance),
        seed=seed,
        noise=noise,
        quiet=bool(cfg.get("quiet", False)),
    )
