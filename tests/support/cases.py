"""Every tiny model the tests run, once: what each exercises and the tolerances the tests assert for it.

One row per `conf/model/tiny_*.yaml` (tests/unit/test_cases_table.py fails when a config has no row or a
row names no config). Tests parametrize over `names(...)` instead of writing model lists, and read their
tolerances from `case(name).tolerances`, so a new tiny model is one row here plus its YAML file.
`slow_except(...)` marks all but a few representative parameters `slow` (`pytest -m "not slow"` skips them).

All tolerances are for fp32 on the CPU; pixel tolerances are max |difference| in uint8 levels over every
pixel of every image in the batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pytest

# The traits a row may name (names(trait=...) refuses others, so a typo cannot select nothing silently).
TRAITS = frozenset(
    {
        "epsilon_prediction",  # the denoiser predicts the noise
        "v_prediction",  # ... or the velocity v (SD 2.x)
        "linear_projection",  # the UNet's transformer blocks project with Linear layers, per-level head dims
        "one_encoder",  # one CLIP text encoder, last hidden state
        "two_encoders",  # two text encoders
        "three_encoders",  # two CLIP + one T5
        "t5",  # a T5 encoder, whose length is model.max_sequence_length
        "pooled",  # a pooled text embedding as added conditioning
        "micro_conditioning",  # size / crop ids as added conditioning (its own stage)
        "discrete_time",  # a discrete-time scheduler (DDPM family), any sampler of that kind
        "flow_matching",  # flow-matching Euler with a shift
        "packed_latents",  # 2x2-packed latent tokens
        "rope",  # rotary position embeddings over token ids
        "guidance_embedding",  # guidance is a model input (distilled), no CFG pass
    }
)


@dataclass(frozen=True)
class Tolerances:
    """What the tests assert for one model (fp32, CPU). None: that comparison does not exist for it."""

    # Paddle engine vs the stock pipeline: ppdiffusers' own (one rounding step of uint8; in practice the
    # images are identical), or (Flux, which ppdiffusers 0.29 lacks) diffusers' FluxPipeline fed the same
    # initial latents. Max pixel levels.
    paddle_stock: int
    # PyTorch engine vs diffusers' stock pipeline, same seed and torch.Generator. Max pixel levels.
    torch_stock: int = 1
    # Paddle vs PyTorch engine on the same weights directory with noise=numpy: two frameworks' kernels
    # differ in the last bits. Max pixel levels.
    cross_engine: int = 2
    # passes=all with verification vs the unoptimized run of the same engine. Max pixel levels.
    passes: int = 1
    # backend=paddle_jit vs eager Paddle: the same kernels in a static program. Max pixel levels.
    paddle_jit: int = 1
    # backend=paddle_inference vs eager Paddle: oneDNN reorders float32 reductions (measured 1). Max pixel levels.
    paddle_inference: int = 2
    # This project's Paddle port of the denoiser vs diffusers' module on the same safetensors: max abs
    # error of the output (only Flux has a port of its own).
    paddle_port_max_abs: float | None = None


@dataclass(frozen=True)
class ModelCase:
    name: str  # conf/model/<name>.yaml
    family: str  # conf/family/<family>.yaml
    traits: frozenset[str]
    denoiser: str  # the denoiser's component role: "unet" or "transformer"
    stages: tuple[str, ...]  # the stage names of a run, in order (what report.json lists)
    cfg: bool  # classifier-free guidance: takes a negative prompt and runs the unconditional pass
    ppdiffusers_pipeline: bool  # ppdiffusers 0.29 ships a stock pipeline for the family
    tolerances: Tolerances
    # Extra arguments the tests pass to the stock pipelines' __call__ to match the runner's settings.
    stock_call: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        unknown = self.traits - TRAITS
        assert not unknown, f"{self.name}: unknown traits {sorted(unknown)}"
        assert self.denoiser in ("unet", "transformer"), self.denoiser


UNET_STAGES = ("encode_prompt", "prepare_latents", "denoise", "decode")

CASES: tuple[ModelCase, ...] = (
    ModelCase(
        name="tiny_sd15",
        family="sd",
        traits=frozenset({"one_encoder", "epsilon_prediction", "discrete_time"}),
        denoiser="unet",
        stages=UNET_STAGES,
        cfg=True,
        ppdiffusers_pipeline=True,
        tolerances=Tolerances(paddle_stock=1),
    ),
    ModelCase(
        name="tiny_sd21",
        family="sd",
        traits=frozenset({"one_encoder", "v_prediction", "linear_projection", "discrete_time"}),
        denoiser="unet",
        stages=UNET_STAGES,
        cfg=True,
        ppdiffusers_pipeline=True,
        tolerances=Tolerances(paddle_stock=1),
    ),
    ModelCase(
        name="tiny_sdxl",
        family="sdxl",
        traits=frozenset(
            {"two_encoders", "pooled", "micro_conditioning", "epsilon_prediction", "linear_projection", "discrete_time"}
        ),
        denoiser="unet",
        stages=("encode_prompt", "size_conditioning", "prepare_latents", "denoise", "decode"),
        cfg=True,
        ppdiffusers_pipeline=True,
        tolerances=Tolerances(paddle_stock=1),
    ),
    ModelCase(
        name="tiny_sd3",
        family="sd3",
        traits=frozenset({"three_encoders", "t5", "pooled", "flow_matching"}),
        denoiser="transformer",
        stages=UNET_STAGES,
        cfg=True,
        ppdiffusers_pipeline=True,
        tolerances=Tolerances(paddle_stock=1),
        stock_call=MappingProxyType({"max_sequence_length": 32}),  # the tiny model's T5 length (diffusers)
    ),
    ModelCase(
        name="tiny_flux",
        family="flux",
        traits=frozenset(
            {"two_encoders", "t5", "pooled", "flow_matching", "packed_latents", "rope", "guidance_embedding"}
        ),
        denoiser="transformer",
        stages=UNET_STAGES,
        cfg=False,  # guidance-distilled: no negative prompt, one transformer pass per step
        ppdiffusers_pipeline=False,  # no ppdiffusers release has Flux; this project ports the transformer
        # vs diffusers' FluxPipeline from the same initial latents: 2 levels (measured 1).
        tolerances=Tolerances(paddle_stock=2, paddle_port_max_abs=1e-4),
        stock_call=MappingProxyType({"max_sequence_length": 32}),
    ),
)

_BY_NAME = {c.name: c for c in CASES}
assert len(_BY_NAME) == len(CASES), "a model has two rows"


def case(name: str) -> ModelCase:
    """The row of this tiny model config."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no row for model {name!r} in tests/support/cases.py; rows: {sorted(_BY_NAME)}") from None


def names(
    *,
    trait: str | None = None,
    family: str | None = None,
    denoiser: str | None = None,
    cfg: bool | None = None,
    ppdiffusers_pipeline: bool | None = None,
    exclude: tuple[str, ...] = (),
) -> list[str]:
    """Config names of the rows that match every given filter, in table order."""
    if trait is not None and trait not in TRAITS:
        raise ValueError(f"unknown trait {trait!r}; known: {sorted(TRAITS)}")
    for name in exclude:
        case(name)  # a misspelt exclusion would exclude nothing
    return [
        c.name
        for c in CASES
        if (trait is None or trait in c.traits)
        and (family is None or c.family == family)
        and (denoiser is None or c.denoiser == denoiser)
        and (cfg is None or c.cfg == cfg)
        and (ppdiffusers_pipeline is None or c.ppdiffusers_pipeline == ppdiffusers_pipeline)
        and c.name not in exclude
    ]


def slow_except(values: Iterable[Any], *fast: Any) -> list[Any]:
    """`values` as pytest parameters, each marked `slow` except those equal to one of `fast`: the
    representatives that `pytest -m "not slow"` still runs. A tuple value is one set of parameters."""
    values = list(values)
    missing = [f for f in fast if f not in values]
    assert not missing, f"fast representatives not among the parameters: {missing}"
    return [
        pytest.param(*(v if isinstance(v, tuple) else (v,)), marks=() if v in fast else pytest.mark.slow)
        for v in values
    ]
