"""The Python API: load a pipeline once (compose -> plan -> build -> passes -> backend), generate many times.

    import runner
    pipe = runner.load(["model=sd15", "model.weights=/models/sd15", "backend=torch", "passes=default"])
    image = pipe.text_to_image("a red fox", negative_prompt="blurry", seed=3)
    result = pipe.generate(prompt=["a", "b"], seed=7, steps=20, height=512, width=768)
    result.save("out/")  # PNGs with their parameters + report.json

The CLI (`mode=run`), the HTTP server and batch jobs all call `Pipeline.generate_batch`; nothing about models,
engines or passes is decided twice. Per-call run parameters are validated exactly as the CLI validates its
overrides (same one-line `ConfigError` messages), before any work.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig
from PIL import Image

from runner.app import BuiltPipeline, build_pipeline, generate
from runner.conf_index import CONF_DIR, config_groups
from runner.config_store import register_schema_defaults
from runner.errors import ConfigError, RunnerError
from runner.executor import Execution
from runner.files import write_json_atomic
from runner.images import png_bytes, save_png
from runner.infotext import infotext, sampler_label
from runner.plan import RunPlan, check_settings, describe_plan, plan_run
from runner.report import REPORT_NAME, build_report
from runner.scheduling import draws_step_noise
from runner.schema import RunSettings, parse_loras, parse_settings, to_plain

log = logging.getLogger(__name__)

# The run parameters a call may set; the rest of the config (quiet, verify, noise) is fixed at load.
RUN_PARAMETERS = (
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "guidance",
    "guidance_rescale",
    "height",
    "width",
    "batch",
)


TEXT_PARAMETERS = ("prompt", "negative_prompt")


class NonFiniteOutputError(RunnerError):
    """The denoiser produced NaN or infinite latents (an fp16 overflow, broken weights): no image is returned."""

    exit_code = 1


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The config the CLI composes for these overrides (Hydra's compose API; no run directory).

    A bad override (an unknown group option, a malformed override) is a one-line ConfigError."""
    register_schema_defaults()
    # Inside a running Hydra app (a user's @hydra.main) Hydra is initialized with the app's config and
    # initialize_config_dir refuses to start: compose with Hydra cleared, then give the app its Hydra back.
    outer = GlobalHydra.instance().hydra
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            return hydra_compose(config_name="config", overrides=list(overrides))
    except HydraException as err:
        # Hydra appends its search path to "could not find" messages: noise for a one-line error.
        message = str(err).split("Config search path")[0]
        raise ConfigError(" ".join(message.split())) from err
    finally:
        GlobalHydra.instance().clear()
        if outer is not None:
            GlobalHydra.instance().initialize(outer)


def load(overrides: Sequence[str] = ()) -> Pipeline:
    """Compose the config for `overrides` (as `python -m runner OVERRIDES` would), plan it, load the weights,
    apply the passes and the backend: a pipeline ready to generate."""
    if isinstance(overrides, str):
        raise TypeError("load() takes a list of overrides, e.g. ['model=sd15', 'backend=torch'], not one string")
    return Pipeline.from_config(compose(overrides))


@dataclass
class Generation:
    """The images of one request (uint8 [H, W, 3] arrays, in prompt-major order), the PNG text chunks of
    each, and the report (report.json's content; `images` is filled in by `save`)."""

    settings: RunSettings
    arrays: list[np.ndarray]
    metadata: list[dict[str, Any]]
    report: dict[str, Any]

    @property
    def images(self) -> list[Image.Image]:
        return [Image.fromarray(array) for array in self.arrays]

    def png(self, index: int) -> bytes:
        """Image `index` encoded as PNG, with the same text chunks as the files `save` writes."""
        return png_bytes(self.arrays[index], self.metadata[index])

    def save(self, output_dir: str | Path, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write image_NNN.png files and report.json (with `extra` sections) atomically; return the report."""
        output_dir = Path(output_dir)
        names = []
        for index, (array, metadata) in enumerate(zip(self.arrays, self.metadata)):
            name = f"image_{index:03d}.png"
            save_png(output_dir / name, array, metadata)
            names.append(name)
        report = {"images": names, **{k: v for k, v in self.report.items() if k != "images"}, **(extra or {})}
        write_json_atomic(output_dir / REPORT_NAME, report)
        return report


class Pipeline:
    """A loaded, optimized pipeline. Thread-safe: calls run one at a time (the components and the scheduler
    are stateful); merge concurrent requests with `generate_batch` instead of calling from many threads."""

    def __init__(self, cfg: Mapping[str, Any], built: BuiltPipeline) -> None:
        self.config: dict[str, Any] = to_plain(cfg)
        self.built = built
        self._run_params = run_parameters(self.config)
        self._lock = threading.Lock()
        plan = built.plan
        self.sampler = sampler_label(plan.scheduler.class_name, plan.scheduler.config)
        # Ancestral/SDE samplers draw step noise from one generator per batch: their requests run alone.
        self.merges_requests = not draws_step_noise(plan.scheduler, built.engine)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Pipeline:
        """Plan (validate everything, before any weights load) and build a composed config."""
        return cls(cfg, build_pipeline(plan_run(cfg)))

    # ------------------------------------------------------------------ what was loaded
    @property
    def plan(self) -> RunPlan:
        return self.built.plan

    @property
    def model_name(self) -> str:
        return self.plan.model.name

    @property
    def resolution_multiple(self) -> int:
        return self.plan.model.resolution_multiple

    @property
    def defaults(self) -> RunSettings:
        """The loaded config's run settings (what a call that sets nothing generates)."""
        return self.plan.settings

    def describe(self, settings: RunSettings | None = None) -> dict[str, Any]:
        """The resolved choices (model, backend, device, precision, sampler, ...) with `settings`' run values;
        None: the loaded config's."""
        plan = self.plan if settings is None else dataclasses.replace(self.plan, settings=settings)
        return {**describe_plan(plan), "sampler": self.sampler, "loras": self.built.loras_report()}

    # ------------------------------------------------------------------ LoRAs
    @property
    def loras(self) -> list[dict[str, Any]]:
        """The LoRAs merged into the weights now: [{"path": ..., "scale": ...}, ...]."""
        return self.built.loras_report()

    def set_loras(self, loras: Sequence[Mapping[str, Any] | str]) -> dict[str, int]:
        """Replace the merged LoRAs ([] for none) without reloading the model: the weights they change are
        updated in place (compiled backends keep their compiled code), and the original weights come back
        bit for bit before the new deltas are added. Every file is read and checked against the model first,
        so a bad one leaves the pipeline as it was. Returns the number of changed modules per component."""
        specs = parse_loras(loras)
        if not self.built.backend.updates_weights_in_place:
            raise ConfigError(
                f"backend={self.plan.backend.name} runs a converted copy of the weights, which set_loras cannot "
                "change in place; load the pipeline with loras=[...] instead"
            )
        with self._lock:
            changed = self.built.set_loras(specs)
        self.config["loras"] = self.built.loras_report()
        log.info("LoRAs now %s (modules changed: %s)", self.built.loras_report() or "none", changed or "none")
        return changed

    # ------------------------------------------------------------------ generating
    def settings(self, **params: Any) -> RunSettings:
        """Validate run parameters as the CLI does; a parameter left at None keeps the loaded config's value."""
        return request_settings(self.plan, self._run_params, params)

    def generate(
        self,
        prompt: str | Sequence[str] | None = None,
        *,
        negative_prompt: str | Sequence[str] | None = None,
        seed: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        guidance_rescale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        batch: int | None = None,
    ) -> Generation:
        """Images for one request (`batch` images per prompt); None keeps the loaded config's value."""
        settings = self.settings(
            prompt=list(prompt) if isinstance(prompt, tuple) else prompt,
            negative_prompt=list(negative_prompt) if isinstance(negative_prompt, tuple) else negative_prompt,
            seed=seed,
            steps=steps,
            guidance=guidance,
            guidance_rescale=guidance_rescale,
            height=height,
            width=width,
            batch=batch,
        )
        return self.generate_batch([settings])[0]

    def text_to_image(self, prompt: str, **params: Any) -> Image.Image:
        """One image for one prompt (the other run parameters as `generate` takes them, `batch` excluded)."""
        if not isinstance(prompt, str):
            raise ConfigError(f"prompt={prompt!r} must be a string (text_to_image makes one image)")
        if params.get("batch") not in (None, 1):
            raise ConfigError(f"batch={params['batch']!r}: text_to_image makes one image; use generate()")
        return self.generate(prompt, **params).images[0]

    def batch_key(self, settings: RunSettings) -> Hashable | None:
        """Requests with equal keys can share one denoise batch without changing any image; None: never."""
        return settings_key(settings) if self.merges_requests else None

    def generate_batch(self, requests: Sequence[RunSettings]) -> list[Generation]:
        """Run requests (from `settings`) as one denoise batch; each gets exactly the images it gets alone
        (its own seed's noise), up to the kernels' batch-size rounding. All must share one `batch_key`."""
        merged = merge_requests(requests, [self.batch_key(s) for s in requests])
        plan = dataclasses.replace(self.plan, settings=merged)
        with self._lock:
            execution = generate(plan, self.built.engine, self.built.components, memory=self.built.memory)
            latents = self.built.engine.to_numpy(execution.state["latents"])
        if not np.isfinite(latents).all():
            raise NonFiniteOutputError(
                f"the denoiser produced NaN/inf latents for {len(requests)} request(s) "
                f"(model={self.model_name}, precision={self.plan.precision.name}); no images returned"
            )
        return self._split(execution, merged, requests)

    def _split(self, execution: Execution, merged: RunSettings, requests: Sequence[RunSettings]) -> list[Generation]:
        images = execution.state["images"]
        # What the whole batch shares is gathered once (the hook listing walks every submodule).
        shared = self._batch_report(execution, merged, len(requests))
        results, start = [], 0
        for settings in requests:
            count = settings.num_images
            run = self.describe(settings)
            metadata = [self._image_metadata(settings, run, index) for index in range(count)]
            report = {**shared, "run": run}
            results.append(Generation(settings, list(images[start : start + count]), metadata, report))
            start += count
        return results

    def generation_of(self, execution: Execution) -> Generation:
        """The Generation of an execution of the loaded plan as it is (the benchmark times those itself)."""
        return self._split(execution, self.plan.settings, [self.plan.settings])[0]

    def _batch_report(self, execution: Execution, merged: RunSettings, requests: int) -> dict[str, Any]:
        """report.json of a denoise batch; `run` (the request's own settings) is filled in per request."""
        built = self.built
        report = build_report(
            images=[],
            stage_ms=execution.stage_ms,
            step_ms=execution.step_ms,
            num_images=merged.num_images,
            peak_memory_mb=execution.peak_memory_mb,
            stage_peak_memory_mb=execution.stage_peak_mb,
            peak_memory_source=execution.peak_memory_source,
            load_ms=built.load_ms,
            run={},
            backend=built.backend.describe(),
            config=self.config,
            engine_versions=built.engine.versions(),
        )
        report["passes"] = built.passes_report()
        report["components"] = built.components_report()
        report["memory"] = built.memory_report()
        # Timings cover the whole denoise batch, which may hold other requests' images.
        report["batch"] = {"requests": requests, "images": merged.num_images}
        return report

    def _image_metadata(self, s: RunSettings, run: Mapping[str, Any], index: int) -> dict[str, Any]:
        """The PNG text chunks of image `index` of a request (`run`: its describe_plan)."""
        prompt_index = index // s.images_per_prompt
        negative = s.negative_prompts[prompt_index] if s.negative_prompts else ""
        metadata = {
            "prompt": s.prompts[prompt_index],
            "negative_prompt": negative,
            "seed": s.seed,
            "batch_index": index,
            **{k: run[k] for k in ("model", "backend", "precision", "scheduler", "scheduler_class")},
            **{k: run[k] for k in ("steps", "guidance", "guidance_rescale", "height", "width", "noise")},
        }
        metadata["parameters"] = infotext(
            prompt=s.prompts[prompt_index],
            negative_prompt=negative,
            steps=s.steps,
            sampler=self.sampler,
            guidance=s.guidance,
            seed=s.seed,
            width=s.width,
            height=s.height,
            model=self.model_name,
        )
        return metadata


def run_parameters(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The run parameters of a composed config (its top-level keys that are not config groups)."""
    return {key: value for key, value in to_plain(cfg).items() if key not in config_groups()}


def request_settings(plan: RunPlan, run_params: Mapping[str, Any], params: Mapping[str, Any]) -> RunSettings:
    """A request's run parameters over the loaded config's (`run_params`), validated as the CLI validates its
    overrides (same one-line ConfigError); a parameter left at None keeps the config's value. Needs the plan
    only (no weights): batch jobs check every line of a prompts file with it before loading anything."""
    fixed = sorted(key for key in params if key in run_params and key not in RUN_PARAMETERS)
    if fixed:
        raise ConfigError(
            f"{', '.join(fixed)}: fixed when the pipeline loads (give them to runner.load), not per call; "
            f"a call sets: {', '.join(RUN_PARAMETERS)}"
        )
    # Any other unknown name goes to the schema check, so its message is the CLI's for the same override.
    given = {key: value for key, value in params.items() if value is not None or key not in RUN_PARAMETERS}
    for key, value in given.items():
        if key not in TEXT_PARAMETERS and isinstance(value, str) and "${" in value:
            raise ConfigError(f"{key}={value!r}: a call's parameters are values, not config interpolations")
    # Prompts are passed as values, never parsed as config text (see parse_settings).
    texts = {key: given.pop(key, run_params.get(key)) for key in TEXT_PARAMETERS}
    run = {**run_params, **given}
    settings = parse_settings(run, plan.model, texts=texts)
    check_settings(settings, plan.model, plan.stages, guidance_given=run.get("guidance") is not None)
    return settings


def settings_key(s: RunSettings) -> Hashable:
    """What requests must share to run in one denoise batch (on a sampler without step noise)."""
    # A missing negative prompt may mean zero embeddings (SDXL), not the empty prompt: never mixed.
    return (s.height, s.width, s.steps, s.guidance, s.guidance_rescale, s.negative_prompts is None)


def merge_requests(requests: Sequence[RunSettings], keys: Sequence[Hashable | None]) -> RunSettings:
    """One RunSettings for requests that share a batch key: prompts side by side (one row per image when
    their images-per-prompt differ), and each request's (seed, rows) so its noise is what it draws alone."""
    if not requests:
        raise ValueError("generate_batch needs at least one request")
    if len(requests) == 1:
        return requests[0]
    if keys[0] is None or any(key != keys[0] for key in keys):
        raise ValueError(f"requests with different batch keys cannot share a batch: {sorted(set(map(str, keys)))}")
    per_prompt = {s.images_per_prompt for s in requests}
    shared_count = len(per_prompt) == 1  # else each prompt is expanded to one row per image

    def rows(s: RunSettings, texts: Sequence[str]) -> list[str]:
        return list(texts) if shared_count else [t for t in texts for _ in range(s.images_per_prompt)]

    prompts = [text for s in requests for text in rows(s, s.prompts)]
    negatives = None
    if requests[0].negative_prompts is not None:
        negatives = tuple(text for s in requests for text in rows(s, s.negative_prompts or ()))
    return dataclasses.replace(
        requests[0],
        prompts=tuple(prompts),
        negative_prompts=negatives,
        images_per_prompt=per_prompt.pop() if shared_count else 1,
        seed_rows=tuple((s.seed, s.num_images) for s in requests),
    )


def run_job(cfg: Mapping[str, Any], output_dir: Path) -> dict[str, Any]:
    """The CLI's `mode=run`: load, generate the config's request, write PNGs and report.json."""
    report = Pipeline.from_config(cfg).generate().save(output_dir)
    log.info("wrote %d image(s) and %s to %s", len(report["images"]), REPORT_NAME, output_dir)
    return report
