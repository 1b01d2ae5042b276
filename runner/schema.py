"""One typed schema per config group, validated once before anything loads.

Each group's dataclass declares its keys, their types and their defaults, written once: here for the run
parameters, models, schedulers, precisions and modes; on the registered class for the options of a backend
(`Backend.options_schema`) or a pass (`Pass.options_schema`). The YAML files only set what differs.
`typed` (runner/typed.py) checks a composed node against its schema with OmegaConf; bad types and unknown
keys become one-line `ConfigError`s. What OmegaConf cannot express (ranges, choices) is checked below.
Nothing here touches devices, environment variables or engines: side effects belong to the runner.

Root schemas are frozen; the nested ones of the model schema are not, because OmegaConf cannot merge into
a frozen dataclass nested in another (it marks those nodes read-only).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

import runner.registry as registry
from runner.conf_index import config_groups
from runner.errors import ConfigError
from runner.single_file import LAYOUTS
from runner.typed import to_plain, typed

NOISE_SOURCES = ("engine", "numpy")
DTYPES = ("float32", "float16", "bfloat16")
QUANTIZED_FORMATS = (None, "int8")  # precision.weights / .activations: None (as the dtype), or int8


# ------------------------------------------------------------------------------------------ run parameters
@dataclass(frozen=True)
class RunParams:
    """The run parameters: the top-level keys of the composed config. None: the model's default."""

    prompt: Any = "a red circle on a blue background"  # a string or a list of strings
    negative_prompt: Any = None  # None: no negative prompt (SDXL then uses zero embeddings, as its pipeline does)
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    # Classifier-free guidance rescale ("Common Diffusion Noise Schedules and Sample Steps are Flawed", 3.4):
    # 0 leaves CFG as it is, 1 gives the guided prediction the spread of the conditional one.
    guidance_rescale: float = 0.0
    height: int | None = None
    width: int | None = None
    batch: int = 1  # images per prompt
    noise: str = "engine"  # engine: each engine's own generator (as its stock pipeline); numpy: the same everywhere
    quiet: bool = False  # True: no progress bar
    verify: bool = False  # True: every component a pass changed is checked against its eager copy on first use
    # LoRAs merged into the weights when the pipeline loads: [{path: file.safetensors, scale: 0.8}, ...]
    loras: Any = field(default_factory=list)


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
    guidance_rescale: float
    seed: int
    noise: str
    quiet: bool
    verify: bool
    # Requests merged into one denoise batch: (seed, images) per request, in row order. Each request's rows
    # get the noise its seed gives it alone. Empty: one request, every row drawn from `seed`.
    seed_rows: tuple[tuple[int, int], ...] = ()

    @property
    def num_images(self) -> int:
        return len(self.prompts) * self.images_per_prompt


# ------------------------------------------------------------------------------------------ model
@dataclass
class RunDefaults:
    """The model's defaults for the run parameters left at null."""

    height: int = MISSING
    width: int = MISSING
    steps: int = MISSING
    guidance: float = MISSING


@dataclass
class ComponentConfig:
    type: str = MISSING  # a component type the engines register (components/loading.py)
    path: str | None = None  # its folder in a weights directory; None: the role's name
    config: dict[str, Any] = field(default_factory=dict)  # architecture, for random weights
    max_length: int | None = None  # tokenizers: the token limit
    # Tokenizers, for weights that carry none (random weights, a single-file checkpoint): the bundled tokenizer
    # (components/assets/tokenizers/<asset>) and its padding token. None: the engine's default asset / its own pad.
    asset: str | None = None
    pad_token: str | None = None


@dataclass
class ModelSchedulerConfig:
    kind: str = MISSING  # the sampler family it needs: discrete or flow_match
    class_name: str = MISSING
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """conf/model/*.yaml (with its conf/family/*.yaml)."""

    name: str = MISSING
    family: str = MISSING
    pipeline_classes: list[str] = MISSING
    resolution_multiple: int = MISSING  # height and width must be multiples of it
    run_defaults: RunDefaults = field(default_factory=RunDefaults)
    scheduler: ModelSchedulerConfig = field(default_factory=ModelSchedulerConfig)
    components: dict[str, ComponentConfig] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)  # {name, type, parameters...}, checked by the graph
    weights: str = "random"  # a diffusers-layout directory, a .safetensors single file, bundled:NAME, or random
    init_seed: int = 0  # seed of the random weights (weights=random); the run seed only draws noise
    guidance_used: bool = True  # False: the denoiser takes no guidance scale (a guidance= given is ignored)
    max_sequence_length: int | None = None  # T5 tokens, for models with a T5 encoder
    # The original checkpoint layout a single .safetensors file of this model has (runner/single_file.py:
    # sd1, sd2, sdxl); None: the model loads from pipeline directories only.
    single_file: str | None = None


@dataclass(frozen=True)
class ComponentSpec:
    """One model component: its registered type, its folder in a weights directory, its architecture."""

    role: str
    type: str
    path: str
    config: dict[str, Any]
    max_length: int | None
    asset: str | None = None
    pad_token: str | None = None


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
    run_defaults: RunDefaults
    scheduler_kind: str
    scheduler_class: str
    scheduler_config: dict[str, Any]
    components: dict[str, ComponentSpec]
    stages: tuple[StageSpec, ...]
    guidance_used: bool
    init_seed: int
    max_sequence_length: int | None
    single_file: str | None = None

    @property
    def uses_random_weights(self) -> bool:
        return self.weights == "random"

    @property
    def weighted_roles(self) -> list[str]:
        """The components with weights (every one but the tokenizers): what a checkpoint or a LoRA holds."""
        return [role for role, spec in self.components.items() if not spec.type.endswith("tokenizer")]


# ------------------------------------------------------------------------------------------ other groups
@dataclass(frozen=True)
class SchedulerSpec:
    """conf/scheduler/*.yaml: a sampler class and the options it gets on top of the model's config."""

    name: str = MISSING
    kind: str | None = None  # None only for `default` (the model's own sampler)
    class_name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PrecisionSpec:
    name: str = MISSING
    dtype: str = MISSING  # activations, and weights unless `weights` says otherwise
    weights: str | None = None  # int8: weights compressed to int8 (a lossy setting; backend=openvino)
    activations: str | None = None  # int8: the denoiser's convolutions quantized, calibrated (backend=openvino)


@dataclass(frozen=True)
class BackendOptions:
    """What every backend YAML sets; a backend class extends it with its own options (`options_schema`)."""

    name: str = MISSING  # the registry key
    engine: str = MISSING
    device: str = MISSING  # auto, or a device of the engine (cpu, gpu:0, cuda:1, npu:0, ...)


@dataclass(frozen=True)
class BackendSpec:
    name: str
    engine: str
    device: str
    options: BackendOptions  # the backend class's options_schema instance (name, engine and device included)


@dataclass(frozen=True)
class RunMode:
    name: str = MISSING


@dataclass(frozen=True)
class BenchSettings:
    """mode=bench: untimed warm-up runs, then timed runs, of the runner and (reference) the stock pipeline."""

    name: str = MISSING
    warmup: int = 1
    repeats: int = 3
    reference: bool = True
    quality: bool = False  # also draw a fixed prompt set: adherence, and PSNR/SSIM vs the fp32 unoptimized run
    quality_prompts: int = 24  # size of that prompt set (runner/shapes.evaluation_prompts)


@dataclass(frozen=True)
class BatchSettings:
    """mode=batch: every prompt of a file, grouped into denoise batches, in this process or on Ray workers;
    a rerun of the same command resumes (runner/batch/)."""

    name: str = MISSING
    prompts_file: str | None = None  # one prompt per line, or JSON Lines (.jsonl: prompt plus run parameters)
    output_dir: str | None = None  # None: outputs/batch/<model>-<prompts file name>; a rerun resumes there
    max_batch: int = 4  # images per denoise batch (prompts with equal settings are grouped)
    workers: int = 1  # 1 without ray.address: this process; otherwise this many Ray actors
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_retries: int = 2  # a batch whose worker died is given to another worker at most this many times
    start_timeout_s: float = 600.0  # a Ray worker that has not loaded its pipeline by then stops the job


MEMORY_PIXEL_MULTIPLE = 8  # every VAE here decodes 8 pixels per latent: tiles are whole latent pixels


@dataclass(frozen=True)
class MemorySettings:
    """conf/memory/*.yaml: where the weights live while a run goes on, and how the VAE decodes
    (components/memory/). `name` picks the strategy: none (everything stays on the device), lean (text
    encoders leave the device after encoding), offload (a component is on the device only while its stage
    runs), sequential (each layer's weights only while that layer runs)."""

    name: str = MISSING
    vae_slicing: bool = False  # decode one image of the batch at a time
    vae_tiling: bool = False  # decode in overlapping tiles when the image is larger than tile_threshold
    tile_threshold: int = 1024  # pixels: tiles only when height or width exceeds it
    tile_size: int = 512  # pixels per tile side (a multiple of 8)
    tile_overlap: float = 0.25  # fraction of a tile shared with its neighbour, blended linearly


MODES: dict[str, type] = {"run": RunMode, "bench": BenchSettings, "serve": RunMode, "batch": BatchSettings}

SERVE_ENGINES = ("local", "ray")


@dataclass(frozen=True)
class ServeSettings:
    """conf/serve/*.yaml: the HTTP service of mode=serve (runner/serve/)."""

    host: str = "127.0.0.1"  # 0.0.0.0 exposes the service to the network: put an authenticating proxy before it
    port: int = 8000
    max_batch: int = 4  # images per merged denoise batch
    max_wait_ms: float = 20.0  # how long the first queued request waits for others to merge with
    max_queue: int = 64  # requests waiting; one more is answered 429 with Retry-After
    retry_after_s: int = 1  # the Retry-After of a 429
    request_timeout_s: float = 300.0  # a request not answered by then (waiting or running) gets 504
    drain_s: float = 30.0  # after SIGTERM: how long in-flight requests may take before the process exits
    max_steps: int = 100  # largest `steps` a request may ask for
    max_n: int | None = None  # largest `n` (images per request); None: max_batch (a request runs in one batch)
    max_pixels: int = 1536 * 1536  # largest width x height a request may ask for
    engine: str = "local"  # local: uvicorn in this process; ray: Ray Serve replicas
    replicas: int = 1  # ray: fixed replica count (ignored when min_replicas/max_replicas are set)
    min_replicas: int | None = None  # ray: autoscaling range
    max_replicas: int | None = None
    target_ongoing_requests: float = 2.0  # ray autoscaling: requests per replica it aims for
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0


@dataclass(frozen=True)
class RaySettings:
    """conf/ray/*.yaml: where Ray runs (serve.engine=ray)."""

    address: str | None = None  # an existing cluster ("auto", "ray://host:10001"); None: start a local Ray
    namespace: str = "diffusion-runner"


# ------------------------------------------------------------------------------------------ parsing
def _name_of(node: Any) -> Any:
    raw = to_plain(node)
    return raw.get("name") if isinstance(raw, Mapping) else None


def parse_model(node: Any) -> ModelSpec:
    m = typed(ModelConfig, node, "model", owner=f"model={_name_of(node)}")
    components = {
        role: ComponentSpec(
            role=role,
            type=c.type,
            path=c.path or role,
            config=c.config,
            max_length=c.max_length,
            asset=c.asset,
            pad_token=c.pad_token,
        )  # fmt: skip
        for role, c in m.components.items()
    }
    if m.single_file is not None and m.single_file not in LAYOUTS:
        raise ConfigError(f"model={m.name}: single_file={m.single_file!r} is not one of {', '.join(LAYOUTS)} (or null)")
    stages = []
    for i, stage in enumerate(m.stages):
        params = dict(stage)
        sname, stype = params.pop("name", None), params.pop("type", None)
        if not sname or not stype:
            raise ConfigError(f"model {m.name!r}: stage #{i} needs both 'name' and 'type', got {stage}")
        stages.append(StageSpec(name=sname, type=stype, params=params))
    return ModelSpec(
        name=m.name,
        family=m.family,
        weights=m.weights,
        pipeline_classes=tuple(m.pipeline_classes),
        resolution_multiple=m.resolution_multiple,
        run_defaults=m.run_defaults,
        scheduler_kind=m.scheduler.kind,
        scheduler_class=m.scheduler.class_name,
        scheduler_config=m.scheduler.config,
        components=components,
        stages=tuple(stages),
        guidance_used=m.guidance_used,
        init_seed=m.init_seed,
        max_sequence_length=m.max_sequence_length,
        single_file=m.single_file,
    )


def parse_scheduler(node: Any) -> SchedulerSpec:
    return typed(SchedulerSpec, node, "scheduler", owner=f"scheduler={_name_of(node)}")


def parse_backend(node: Any) -> BackendSpec:
    """The backend options, typed by the registered backend class's own schema."""
    name = _name_of(node)
    if not isinstance(name, str):
        raise ConfigError("backend.name is missing")
    schema = registry.resolve("backend", name).options_schema
    options = typed(schema, node, "backend", owner=f"backend={name}")
    return BackendSpec(name=options.name, engine=options.engine, device=options.device, options=options)


def parse_mode(node: Any) -> RunMode | BenchSettings | BatchSettings:
    """The mode group (conf/mode/*.yaml), typed by the schema of its name."""
    name = _name_of(node)
    if name not in MODES:
        raise ConfigError(f"mode={name} is not one of {', '.join(sorted(MODES))}")
    return typed(MODES[name], node, "mode", owner=f"mode={name}")


def parse_serve(node: Any) -> ServeSettings:
    """The serve group, typed, with its ranges checked."""
    serve = typed(ServeSettings, node, "serve", owner="the serve config")
    if serve.engine not in SERVE_ENGINES:
        raise ConfigError(f"serve.engine={serve.engine!r} is not one of {', '.join(SERVE_ENGINES)}")
    if not 0 <= serve.port <= 65535:
        raise ConfigError(f"serve.port={serve.port} must be in [0, 65535] (0: any free port)")
    for key in ("max_batch", "max_queue", "max_steps", "max_pixels", "replicas", "retry_after_s"):
        if getattr(serve, key) < 1:
            raise ConfigError(f"serve.{key}={getattr(serve, key)} must be >= 1")
    if serve.max_n is not None and not 1 <= serve.max_n <= serve.max_batch:
        raise ConfigError(
            f"serve.max_n={serve.max_n} must be in [1, serve.max_batch={serve.max_batch}]: "
            "a request's images run in one denoise batch"
        )
    for key in ("max_wait_ms", "drain_s", "gpus_per_replica"):
        if getattr(serve, key) < 0:
            raise ConfigError(f"serve.{key}={getattr(serve, key)} must be >= 0")
    for key in ("request_timeout_s", "cpus_per_replica", "target_ongoing_requests"):
        if getattr(serve, key) <= 0:
            raise ConfigError(f"serve.{key}={getattr(serve, key)} must be > 0")
    low, high = serve.min_replicas, serve.max_replicas
    if (low is None) != (high is None):
        raise ConfigError("serve.min_replicas and serve.max_replicas go together (an autoscaling range); set both")
    if low is not None and high is not None and not (0 <= low <= high and high >= 1):
        raise ConfigError(f"serve.min_replicas={low} and serve.max_replicas={high} need 0 <= min <= max and max >= 1")
    return serve


def parse_memory(node: Any) -> MemorySettings:
    """The memory group, typed, its strategy one of the registered ones and its tile options in range."""
    memory = typed(MemorySettings, node, "memory", owner=f"memory={_name_of(node)}")
    modes = registry.names("memory")
    if memory.name not in modes:
        raise ConfigError(f"memory={memory.name} is not one of {', '.join(modes)}")
    if memory.tile_threshold < 1:
        raise ConfigError(f"memory.tile_threshold={memory.tile_threshold} must be >= 1 (pixels)")
    if memory.tile_size < MEMORY_PIXEL_MULTIPLE or memory.tile_size % MEMORY_PIXEL_MULTIPLE:
        raise ConfigError(f"memory.tile_size={memory.tile_size} must be a positive multiple of {MEMORY_PIXEL_MULTIPLE}")
    if not 0 <= memory.tile_overlap <= 0.75:
        raise ConfigError(f"memory.tile_overlap={memory.tile_overlap} must be in [0, 0.75]")
    return memory


def parse_ray(node: Any) -> RaySettings:
    return typed(RaySettings, node, "ray", owner="the ray config")


def parse_precision(node: Any) -> PrecisionSpec:
    precision = typed(PrecisionSpec, node, "precision", owner=f"precision={_name_of(node)}")
    if precision.dtype not in DTYPES:
        raise ConfigError(f"precision.dtype={precision.dtype!r} is not one of {', '.join(DTYPES)}")
    for key in ("weights", "activations"):
        if getattr(precision, key) not in QUANTIZED_FORMATS:
            allowed = ", ".join(str(w) for w in QUANTIZED_FORMATS)
            raise ConfigError(f"precision.{key}={getattr(precision, key)!r} is not one of {allowed}")
    if precision.activations is not None and precision.weights is None:
        raise ConfigError(f"precision={precision.name}: int8 activations need int8 weights (precision.weights=int8)")
    return precision


def _prompts(value: Any, key: str, allow_none: bool) -> tuple[str, ...] | None:
    # A string or a list of strings: a union OmegaConf cannot type, so checked here.
    if value is None and allow_none:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{key}={value!r} must be a string or a non-empty list of strings")


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA file and the scale its weight deltas are merged with."""

    path: str
    scale: float = 1.0


LORA_KEYS = ("path", "scale")


def parse_loras(value: Any) -> tuple[LoraSpec, ...]:
    """`loras`: a list of {path, scale} entries (a bare path: scale 1); checked here, files read later."""
    value = to_plain(value)
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise ConfigError(f"loras={value!r} must be a list of {{path: FILE.safetensors, scale: NUMBER}} entries")
    specs = []
    for index, entry in enumerate(value):
        entry = {"path": entry} if isinstance(entry, str) else entry
        where = f"loras[{index}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}={entry!r} must be {{path: FILE.safetensors, scale: NUMBER}} or a path")
        unknown = sorted(set(entry) - set(LORA_KEYS))
        if unknown:
            raise ConfigError(f"{where} has unknown key(s) {', '.join(map(str, unknown))}; allowed: path, scale")
        path, scale = entry.get("path"), entry.get("scale", 1.0)
        if not isinstance(path, str) or not path:
            raise ConfigError(f"{where}.path={path!r} must be the path of a LoRA file")
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
            raise ConfigError(f"{where}.scale={scale!r} must be a finite number")
        specs.append(LoraSpec(path, float(scale)))
    return tuple(specs)


def parse_run_params(cfg: Mapping[str, Any]) -> RunParams:
    """The top-level keys of the composed config that are not config groups, typed."""
    run = {key: cfg[key] for key in cfg if key not in config_groups()}
    return typed(RunParams, run, "", owner="the run config", noun="parameter")


def parse_settings(cfg: Mapping[str, Any], model: ModelSpec, texts: Mapping[str, Any] | None = None) -> RunSettings:
    """Fill run parameters left at null from the model's defaults and check every value.

    texts: `prompt` / `negative_prompt` given as Python values rather than config text (the Python API, the
    server). They bypass OmegaConf, which would resolve `${...}` in them (`${oc.env:SECRET}` in a request's
    prompt would read the server's environment), and get the same checks and messages.
    """
    run = parse_run_params({**cfg, **dict.fromkeys(texts or (), None)})
    if texts:
        run = dataclasses.replace(run, **texts)
    d = model.run_defaults
    height = d.height if run.height is None else run.height
    width = d.width if run.width is None else run.width
    m = model.resolution_multiple
    for key, value in (("height", height), ("width", width)):
        if value <= 0 or value % m:
            raise ConfigError(f"{key}={value} must be a positive multiple of {m} for model={model.name}")
    steps = d.steps if run.steps is None else run.steps
    if steps < 1:
        raise ConfigError(f"steps={steps} must be >= 1")
    if run.batch < 1:
        raise ConfigError(f"batch={run.batch} must be >= 1 (images per prompt)")
    guidance = d.guidance if run.guidance is None else run.guidance
    if not math.isfinite(guidance) or guidance < 0:
        raise ConfigError(f"guidance={guidance} must be a finite number >= 0")
    if not 0 <= run.guidance_rescale <= 1:
        raise ConfigError(f"guidance_rescale={run.guidance_rescale} must be in [0, 1]")
    if not 0 <= run.seed < 2**63:
        raise ConfigError(f"seed={run.seed} must be in [0, 2**63)")
    if run.noise not in NOISE_SOURCES:
        raise ConfigError(f"noise={run.noise!r} is not one of {', '.join(NOISE_SOURCES)}")
    prompts = _prompts(run.prompt, "prompt", allow_none=False)
    negatives = _prompts(run.negative_prompt, "negative_prompt", allow_none=True)
    if negatives is not None and len(negatives) not in (1, len(prompts)):
        raise ConfigError(
            f"negative_prompt has {len(negatives)} entries but prompt has {len(prompts)}; give one or the same number"
        )
    if negatives is not None and len(negatives) == 1 and len(prompts) > 1:
        negatives = negatives * len(prompts)
    return RunSettings(
        prompts=prompts,
        negative_prompts=negatives,
        images_per_prompt=run.batch,
        height=height,
        width=width,
        steps=steps,
        guidance=float(guidance),
        guidance_rescale=run.guidance_rescale,
        seed=run.seed,
        noise=run.noise,
        quiet=run.quiet,
        verify=run.verify,
    )
