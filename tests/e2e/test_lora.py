"""LoRA: files as trainers ship them (kohya / sd-scripts, diffusers / PEFT), merged into the weights.

References: diffusers' own `load_lora_weights` on the stock pipeline (PyTorch engine, max |pixel difference|
<= Tolerances.torch_stock = 1); the Paddle engine against the PyTorch engine with noise=numpy (<= 2 levels);
`set_loras` on a live pipeline against a pipeline loaded with the same LoRAs (same engine and shapes: exact),
and removing them against the weights as loaded (bit for bit).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import runner
from runner.errors import ConfigError
from tests.support.cases import case
from tests.support.loras import random_pairs, target_layers, trainer_name, write_kohya, write_peft
from tests.support.runs import max_pixel_diff, to_uint8

PROMPT = "a red fox in the snow"
RUN = ["steps=3", "seed=7", f"prompt='{PROMPT}'", "quiet=true"]
LORA_EFFECT = 3  # levels: a LoRA that changes the images less than this is not visibly applied


def diffusers_pipeline(model: str, weights: Path):
    import diffusers

    from tests.support.configs import model_spec

    pipe = getattr(diffusers, model_spec(model).pipeline_classes[0]).from_pretrained(str(weights))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stock_images(pipe, model: str, loras: list[tuple[Path, float]], **call) -> np.ndarray:
    """The stock pipeline's images with these LoRA files loaded by diffusers (PEFT adapters)."""
    import torch

    names = []
    for index, (path, _) in enumerate(loras):
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=f"a{index}")
        names.append(f"a{index}")
    if names:
        pipe.set_adapters(names, adapter_weights=[scale for _, scale in loras])
    from runner.plan import plan_run
    from tests.support.configs import compose_config

    settings = plan_run(compose_config([f"model={model}", "backend=torch"]), check_capabilities=False).settings
    out = pipe(prompt=PROMPT, num_inference_steps=3, height=settings.height, width=settings.width,
               guidance_scale=settings.guidance, generator=torch.Generator("cpu").manual_seed(7), output_type="np",
               **case(model).stock_call, **call)  # fmt: skip
    return to_uint8(out.images)


def lora_arg(loras: list[tuple[Path, float]]) -> str:
    return "loras=[" + ",".join(f"{{path:'{path}',scale:{scale}}}" for path, scale in loras) + "]"


def images(overrides: list[str]) -> np.ndarray:
    return np.stack(runner.load(overrides).generate().arrays)


def pairs_for(pipe, roles: tuple[str, ...], seed: int, limit: int | None = None) -> dict:
    return {role: random_pairs(target_layers(getattr(pipe, role), limit), rank=4, seed=seed + i)
            for i, role in enumerate(roles)}  # fmt: skip


RESNET_SGM = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
              "conv_shortcut": "skip_connection"}  # fmt: skip


def sgm_name(name: str, layers_per_block: int) -> str:
    """diffusers' name of an SDXL UNet layer -> the original SGM name sd-scripts writes."""
    import re

    per_level = layers_per_block + 1
    if m := re.fullmatch(r"(down|up|mid)_blocks?\.(?:(\d+)\.)?(attentions|resnets)\.(\d+)\.(.+)", name):
        kind, level, part, index, rest = m[1], int(m[2] or 0), m[3], int(m[4]), m[5]
        if part == "resnets":
            rest = RESNET_SGM[rest]
        if kind == "mid":
            return f"middle_block.{1 if part == 'attentions' else 2 * index}.{rest}"
        sub = 1 if part == "attentions" else 0
        block = 1 + level * per_level + index if kind == "down" else level * per_level + index
        return f"{'input' if kind == 'down' else 'output'}_blocks.{block}.{sub}.{rest}"
    return name


def conv_pairs(unet, rank: int, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """LoCon-style pairs for the resnets' convolutions and time projections (4-D for convolutions)."""
    from torch import nn

    rng = np.random.default_rng(seed)
    pairs = {}
    for name, module in unet.named_modules():
        if ".resnets." in name and name.rsplit(".", 1)[-1] in RESNET_SGM:
            weight = module.weight
            if isinstance(module, nn.Conv2d):
                down = rng.standard_normal((rank, *weight.shape[1:])) * 0.1 / np.sqrt(weight[0].numel())
                up = rng.standard_normal((weight.shape[0], rank, 1, 1)) * 0.1
            else:
                down = rng.standard_normal((rank, weight.shape[1])) * 0.1 / np.sqrt(weight.shape[1])
                up = rng.standard_normal((weight.shape[0], rank)) * 0.1
            pairs[name] = (down.astype(np.float32), up.astype(np.float32))
    return pairs


# ------------------------------------------------------------------------------- against diffusers
@pytest.mark.parametrize("model,fmt", [("tiny_sd15", "kohya"), ("tiny_sd15", "peft"), ("tiny_sd21", "kohya")])
def test_sd_lora_equals_diffusers_load_lora_weights(tiny_weights, tmp_path, model, fmt):
    """UNet and text encoder LoRA, kohya (alpha 2 of rank 4) or PEFT, at scale 0.8: the stock pipeline with
    diffusers' load_lora_weights gives the same images; and the LoRA visibly changes them. (SD 2.1's UNet
    projects with Linear layers where SD 1.5 has 1x1 convolutions.)"""
    weights = tiny_weights(model)
    pipe = diffusers_pipeline(model, weights)
    pairs = pairs_for(pipe, ("unet", "text_encoder"), seed=1)
    path = tmp_path / f"{fmt}.safetensors"
    write_kohya(path, pairs, alpha=2.0) if fmt == "kohya" else write_peft(path, pairs)
    common = [f"model={model}", f"model.weights={weights}", "backend=torch", *RUN]
    ours = images([*common, lora_arg([(path, 0.8)])])
    theirs = stock_images(pipe, model, [(path, 0.8)])
    assert max_pixel_diff(ours, theirs) <= case(model).tolerances.torch_stock
    assert max_pixel_diff(ours, images(common)) >= LORA_EFFECT


def test_sdxl_kohya_sgm_names_with_a_second_lora_equal_diffusers(tiny_weights, tmp_path):
    """SDXL as sd-scripts trains it (SGM UNet names, resnet convolutions too, lora_te1_ / lora_te2_) at 0.7, plus a
    PEFT UNet LoRA at 0.5."""
    weights = tiny_weights("tiny_sdxl")
    pipe = diffusers_pipeline("tiny_sdxl", weights)
    first = pairs_for(pipe, ("unet", "text_encoder", "text_encoder_2"), seed=3)
    first["unet"].update(conv_pairs(pipe.unet, rank=4, seed=8))
    layers = pipe.unet.config.layers_per_block
    kohya = write_kohya(tmp_path / "sgm.safetensors", first, alpha=4.0,
                        names={n: sgm_name(n, layers) for n in first["unet"]})  # fmt: skip
    keys = _keys(kohya)
    assert any(k.startswith("lora_unet_input_blocks_4_0_in_layers_2") for k in keys), keys
    assert any(k.startswith("lora_unet_middle_block_1_transformer") for k in keys), keys
    peft = write_peft(tmp_path / "peft.safetensors", pairs_for(pipe, ("unet",), seed=9))
    loras = [(kohya, 0.7), (peft, 0.5)]
    common = ["model=tiny_sdxl", f"model.weights={weights}", "backend=torch", *RUN]
    ours = images([*common, lora_arg(loras)])
    assert max_pixel_diff(ours, stock_images(pipe, "tiny_sdxl", loras)) <= case("tiny_sdxl").tolerances.torch_stock
    assert max_pixel_diff(ours, images(common)) >= LORA_EFFECT


def _keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        return list(f.keys())


def bfl_flux_lora(pipe, tmp_path: Path, seed: int) -> tuple[Path, dict]:
    """A kohya Flux LoRA in BFL's names (fused img/txt qkv of the double blocks, the single blocks' linear2 and
    modulation, CLIP layers), and the same pairs by diffusers module name (for the Paddle comparison)."""
    rng = np.random.default_rng(seed)
    transformer = pipe.transformer
    rank, tensors = 4, {}

    def pair(out: int, inp: int) -> tuple[np.ndarray, np.ndarray]:
        return ((rng.standard_normal((rank, inp)) * 0.3 / np.sqrt(inp)).astype(np.float32),
                (rng.standard_normal((out, rank)) * 0.3).astype(np.float32))  # fmt: skip

    for i, block in enumerate(transformer.transformer_blocks):
        width = block.attn.to_q.in_features
        for stream in ("img", "txt"):
            down, up = pair(3 * block.attn.to_q.out_features, width)
            tensors[f"lora_unet_double_blocks_{i}_{stream}_attn_qkv.lora_down.weight"] = down
            tensors[f"lora_unet_double_blocks_{i}_{stream}_attn_qkv.lora_up.weight"] = up
            tensors[f"lora_unet_double_blocks_{i}_{stream}_attn_qkv.alpha"] = np.array(2.0, np.float32)
    for i, block in enumerate(transformer.single_transformer_blocks):
        for name, layer in (("linear2", block.proj_out), ("modulation_lin", block.norm.linear)):
            down, up = pair(layer.out_features, layer.in_features)
            tensors[f"lora_unet_single_blocks_{i}_{name}.lora_down.weight"] = down
            tensors[f"lora_unet_single_blocks_{i}_{name}.lora_up.weight"] = up
            tensors[f"lora_unet_single_blocks_{i}_{name}.alpha"] = np.array(4.0, np.float32)
    for name, (down, up) in random_pairs(target_layers(pipe.text_encoder), rank, seed + 1).items():
        stem = "lora_te1_" + trainer_name("text_encoder", name).replace(".", "_")
        tensors.update({f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up,
                        f"{stem}.alpha": np.array(4.0, np.float32)})  # fmt: skip
    from safetensors.numpy import save_file

    path = tmp_path / "flux_bfl.safetensors"
    save_file(tensors, str(path))
    return path, tensors


def test_flux_kohya_lora_in_bfl_names_equals_diffusers(tiny_weights, tmp_path):
    """Flux's fused projections (BFL names) split onto diffusers' modules as diffusers' own converter does."""
    weights = tiny_weights("tiny_flux")
    pipe = diffusers_pipeline("tiny_flux", weights)
    path, _ = bfl_flux_lora(pipe, tmp_path, seed=4)
    common = ["model=tiny_flux", f"model.weights={weights}", "backend=torch", *RUN]
    ours = images([*common, lora_arg([(path, 0.9)])])
    theirs = stock_images(pipe, "tiny_flux", [(path, 0.9)])
    assert max_pixel_diff(ours, theirs) <= case("tiny_flux").tolerances.torch_stock
    assert max_pixel_diff(ours, images(common)) >= LORA_EFFECT


def test_flux_single_block_linear1_splits_onto_q_k_v_and_mlp(tiny_weights, tmp_path):
    """BFL's linear1 of a single block holds Q, K, V and the MLP input in that row order (diffusers'
    converter hard-codes the full model's sizes, so the tiny model is checked against the same layers
    written one by one in the PEFT format)."""
    from safetensors.numpy import save_file

    weights = tiny_weights("tiny_flux")
    pipe = diffusers_pipeline("tiny_flux", weights)
    rng = np.random.default_rng(11)
    fused, split = {}, {}
    for i, block in enumerate(pipe.transformer.single_transformer_blocks):
        parts = [block.attn.to_q, block.attn.to_k, block.attn.to_v, block.proj_mlp]
        names = ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"]
        down = (rng.standard_normal((4, parts[0].in_features)) * 0.1).astype(np.float32)
        up = (rng.standard_normal((sum(p.out_features for p in parts), 4)) * 0.3).astype(np.float32)
        fused[f"lora_unet_single_blocks_{i}_linear1.lora_down.weight"] = down
        fused[f"lora_unet_single_blocks_{i}_linear1.lora_up.weight"] = up
        start = 0
        for name, part in zip(names, parts):
            stem = f"transformer.single_transformer_blocks.{i}.{name}"
            split[f"{stem}.lora_A.weight"], split[f"{stem}.lora_B.weight"] = down, up[start : start + part.out_features]
            start += part.out_features
    save_file(fused, str(tmp_path / "fused.safetensors"))
    save_file(split, str(tmp_path / "split.safetensors"))
    common = ["model=tiny_flux", f"model.weights={weights}", "backend=torch", *RUN]
    fused_images = images([*common, lora_arg([(tmp_path / "fused.safetensors", 1.0)])])
    assert max_pixel_diff(fused_images, images([*common, lora_arg([(tmp_path / "split.safetensors", 1.0)])])) == 0
    assert max_pixel_diff(fused_images, images(common)) >= LORA_EFFECT


# ------------------------------------------------------------------------------- set_loras on a live pipeline
def state(pipe: runner.Pipeline) -> dict[str, np.ndarray]:
    """Every weight of every component, as numpy (the fused layers of qkv_fusion included)."""
    engine, out = pipe.built.engine, {}
    for role, component in pipe.built.components.items():
        if hasattr(component, "state_dict") and callable(component.state_dict):
            for key, value in component.state_dict().items():
                out[f"{role}.{key}"] = engine.to_numpy(value).copy()
    return out


@pytest.mark.parametrize("engine", ["torch", "paddle"])
def test_set_loras_swaps_in_place_and_restores_bit_for_bit(tiny_weights, tmp_path, engine):
    """set_loras(a) == load(loras=[a]); then set_loras(b) == load(loras=[b]) (a taken out first); then
    set_loras([]) gives back every weight bit for bit. With qkv_fusion, Q/K/V live in the fused projection (rows
    of a PyTorch Linear, columns of a Paddle one) and the other projections are plain Linear layers: every
    layout the engines hold LoRA weights in."""
    passes = "qkv_fusion"
    weights = tiny_weights("tiny_sd15")
    stock = diffusers_pipeline("tiny_sd15", weights)
    first = write_kohya(tmp_path / "a.safetensors", pairs_for(stock, ("unet", "text_encoder"), seed=1), alpha=2.0)
    second = write_peft(tmp_path / "b.safetensors", pairs_for(stock, ("unet",), seed=5))
    common = ["model=tiny_sd15", f"model.weights={weights}", f"backend={engine}", f"passes={passes}", *RUN]
    pipe = runner.load(common)
    original, plain = state(pipe), np.stack(pipe.generate().arrays)
    changed = pipe.set_loras([{"path": str(first), "scale": 0.8}])
    assert changed == {"unet": len(target_layers(stock.unet)), "text_encoder": len(target_layers(stock.text_encoder))}
    with_first = np.stack(pipe.generate().arrays)
    assert max_pixel_diff(with_first, images([*common, lora_arg([(first, 0.8)])])) == 0
    assert max_pixel_diff(with_first, plain) >= LORA_EFFECT
    pipe.set_loras([str(second)])
    assert pipe.loras == [{"path": str(second), "scale": 1.0}]
    assert max_pixel_diff(np.stack(pipe.generate().arrays), images([*common, lora_arg([(second, 1.0)])])) == 0
    pipe.set_loras([])
    restored = state(pipe)
    assert sorted(restored) == sorted(original)
    assert all(np.array_equal(restored[key], original[key]) for key in original)
    assert max_pixel_diff(np.stack(pipe.generate().arrays), plain) == 0


def test_set_loras_refreshes_the_text_embedding_cache(tiny_weights, tmp_path):
    """A cached prompt embedding is not served after a LoRA changed the text encoder."""
    weights = tiny_weights("tiny_sd15")
    stock = diffusers_pipeline("tiny_sd15", weights)
    lora = write_kohya(tmp_path / "te.safetensors", pairs_for(stock, ("text_encoder",), seed=2), alpha=4.0)
    common = ["model=tiny_sd15", f"model.weights={weights}", "backend=torch", "passes=text_embedding_cache", *RUN]
    pipe = runner.load(common)
    pipe.generate()
    pipe.set_loras([str(lora)])
    assert max_pixel_diff(np.stack(pipe.generate().arrays), images([*common, lora_arg([(lora, 1.0)])])) == 0


@pytest.mark.paddle
def test_paddle_engine_lora_within_two_levels_of_torch(tiny_weights, tmp_path):
    """The same kohya SD 1.5 LoRA and BFL Flux LoRA on both engines (noise=numpy): <= 2 levels apart."""
    for model, make in (("tiny_sd15", None), ("tiny_flux", bfl_flux_lora)):
        weights = tiny_weights(model)
        stock = diffusers_pipeline(model, weights)
        if make is None:
            path = write_kohya(tmp_path / "sd.safetensors", pairs_for(stock, ("unet", "text_encoder"), 1), alpha=2.0)
        else:
            path, _ = make(stock, tmp_path, seed=4)
        common = [f"model={model}", f"model.weights={weights}", "noise=numpy", "scheduler=euler", *RUN]
        if model == "tiny_flux":
            common.remove("scheduler=euler")
        common.append(lora_arg([(path, 0.8)]))
        ours_torch, ours_paddle = images([*common, "backend=torch"]), images([*common, "backend=paddle"])
        assert max_pixel_diff(ours_paddle, ours_torch) <= 2, model
        plain = images([c for c in common if not c.startswith("loras=")] + ["backend=paddle"])
        assert max_pixel_diff(ours_paddle, plain) >= LORA_EFFECT, model


@pytest.mark.slow
@pytest.mark.parametrize("backend,eager", [("inductor", "torch"), ("paddle_jit", "paddle")])
def test_set_loras_on_compiled_backends_updates_weights_without_compiling_again(tiny_weights, tmp_path, backend, eager):
    """The compiled UNet reads the new weights: images as the eager engine draws them with the LoRA loaded;
    on inductor no graph is compiled again (dynamo's count of compiled graphs is unchanged)."""
    from torch._dynamo.utils import counters

    weights = tiny_weights("tiny_sd15")
    stock = diffusers_pipeline("tiny_sd15", weights)
    lora = write_kohya(tmp_path / "u.safetensors", pairs_for(stock, ("unet",), seed=6), alpha=4.0)
    common = ["model=tiny_sd15", f"model.weights={weights}", *RUN]
    pipe = runner.load([*common, f"backend={backend}"])
    hooks = pipe.built.components_report()["unet"]["hooks"]
    plain = np.stack(pipe.generate().arrays)
    compiled = counters["stats"]["unique_graphs"]
    pipe.set_loras([str(lora)])
    with_lora = np.stack(pipe.generate().arrays)
    assert counters["stats"]["unique_graphs"] == compiled
    assert pipe.built.components_report()["unet"]["hooks"] == hooks
    reference = images([*common, f"backend={eager}", lora_arg([(lora, 1.0)])])
    assert max_pixel_diff(with_lora, reference) <= case("tiny_sd15").tolerances.torch_stock
    assert max_pixel_diff(with_lora, plain) >= LORA_EFFECT


# ------------------------------------------------------------------------------------------------ bad input
def _no_loading(monkeypatch):
    from runner import app

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the refusal")

    monkeypatch.setattr(app, "load_components", refuse)


def kohya_file(path: Path, names: dict[str, tuple[int, int]], prefix: str = "lora_unet_") -> Path:
    from safetensors.numpy import save_file

    tensors = {}
    for name, (out, inp) in names.items():
        tensors[f"{prefix}{name}.lora_down.weight"] = np.ones((2, inp), np.float32)
        tensors[f"{prefix}{name}.lora_up.weight"] = np.ones((out, 2), np.float32)
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda d: d / "missing.safetensors", r"^LoRA \S+missing.safetensors is not a file$"),
        (lambda d: _write(d / "a.ckpt", b"x"), r"^LoRA \S+a.ckpt: .ckpt files are Python pickles, which can run code"),
        (lambda d: _write(d / "bad.safetensors", b"\x05\x00\x00\x00\x00\x00\x00\x00{"),
         r"^LoRA \S+bad.safetensors is not a readable safetensors file"),
        (lambda d: _tensors(d / "odd.safetensors", {"model.layer.weight": np.ones(2, np.float32)}),
         r"^LoRA \S+odd.safetensors: 1 key\(s\) in no LoRA format this runner reads .* e.g. model.layer.weight$"),
        (lambda d: kohya_file(d / "flux.safetensors", {"double_blocks_0_img_attn_qkv": (96, 32)}),
         r"^LoRA \S+flux.safetensors is for Flux but the model is Stable Diffusion 1.x/2.x$"),
        (lambda d: kohya_file(d / "te2.safetensors", {"text_model_encoder_layers_0_mlp_fc1": (37, 32)}, "lora_te2_"),
         r"^LoRA \S+te2.safetensors changes component text_encoder_2, which this model does not have"),
    ],
    ids=["missing", "pickle", "corrupt", "unknown-keys", "other-family", "other-components"],
)  # fmt: skip
def test_bad_lora_files_are_refused_in_one_line_before_any_weights_load(tmp_path, monkeypatch, make, message):
    from runner.app import build_pipeline
    from runner.plan import plan_run
    from tests.support.configs import compose_config

    _no_loading(monkeypatch)
    path = make(tmp_path)
    plan = plan_run(compose_config(["model=tiny_sd15", "backend=torch", lora_arg([(path, 1.0)])]))
    with pytest.raises(ConfigError, match=message) as err:
        build_pipeline(plan)
    assert "\n" not in str(err.value)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _tensors(path: Path, tensors: dict) -> Path:
    from safetensors.numpy import save_file

    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize(
    "value,message",
    [
        ("loras=3", r"^loras=3 must be a list of \{path: FILE.safetensors, scale: NUMBER\} entries$"),
        ("loras=[{path:a.safetensors,weight:2}]", r"^loras\[0\] has unknown key\(s\) weight; allowed: path, scale$"),
        ("loras=[{path:a.safetensors,scale:strong}]", r"^loras\[0\].scale='strong' must be a finite number$"),
        ("loras=[{scale:1}]", r"^loras\[0\].path=None must be the path of a LoRA file$"),
    ],
)
def test_bad_lora_entries_are_refused_when_planning(value, message):
    from runner.plan import plan_run
    from tests.support.configs import compose_config

    with pytest.raises(ConfigError, match=message):
        plan_run(compose_config(["model=tiny_sd15", "backend=torch", value]), check_capabilities=False)


def test_a_lora_that_does_not_fit_leaves_the_pipeline_as_it_was(tiny_weights, tmp_path):
    """Unknown module names (listed) and wrong shapes are refused by set_loras before any weight changes."""
    weights = tiny_weights("tiny_sd15")
    pipe = runner.load(["model=tiny_sd15", f"model.weights={weights}", "backend=torch", *RUN])
    stock = diffusers_pipeline("tiny_sd15", weights)
    good = write_kohya(tmp_path / "good.safetensors", pairs_for(stock, ("unet",), seed=1), alpha=2.0)
    pipe.set_loras([str(good)])
    before = state(pipe)
    names = {f"down_blocks_0_attentions_0_nothing_{i}": (32, 32) for i in range(7)}
    unknown = kohya_file(tmp_path / "unknown.safetensors", names)
    expected = (
        r"7 of its 7 layers name no module of model=tiny_sd15: down_blocks_0_attentions_0_nothing_0, .* "
        r"\(and 2 more\); is it a LoRA for another model\?$"
    )
    with pytest.raises(ConfigError, match=expected):
        pipe.set_loras([str(good), str(unknown)])
    layer = next(iter(target_layers(stock.unet)))
    wide = kohya_file(tmp_path / "wide.safetensors", {layer.replace(".", "_"): (999, 8)})
    with pytest.raises(ConfigError, match=rf"layer {layer.replace('.', '_')} changes a weight of shape \[999, 8\]"):
        pipe.set_loras([str(wide)])
    after = state(pipe)
    assert all(np.array_equal(after[key], before[key]) for key in before)
    assert pipe.loras == [{"path": str(good), "scale": 1.0}]


def test_requests_cannot_change_loras(tiny_weights):
    """LoRAs are fixed when the pipeline loads: a call's parameters and the server's requests refuse them."""
    from runner.serve.protocol import BadRequest, Limits, parse_openai

    pipe = runner.load(["model=tiny_sd15", "backend=torch", *RUN])
    with pytest.raises(ConfigError, match=r"^loras: fixed when the pipeline loads \(give them to runner.load\)"):
        pipe.settings(loras=[{"path": "x.safetensors"}])
    limits = Limits(model="tiny_sd15", multiple=8, default_width=64, default_height=64, max_pixels=512 * 512,
                    max_steps=50, max_n=4)  # fmt: skip
    with pytest.raises(BadRequest, match=r"^unrecognized request argument\(s\): loras$"):
        parse_openai({"prompt": "a", "loras": [{"path": "x.safetensors"}]}, limits)


def test_set_loras_before_verification_checks_what_the_passes_did(tiny_weights, tmp_path):
    """verify=true keeps eager copies until the first call: a LoRA set before it reaches those copies too, so the
    check compares the passes (and passes), and the images are those of a pipeline loaded with the LoRA."""
    weights = tiny_weights("tiny_sd15")
    stock = diffusers_pipeline("tiny_sd15", weights)
    lora = write_kohya(tmp_path / "a.safetensors", pairs_for(stock, ("unet",), seed=1), alpha=2.0)
    common = ["model=tiny_sd15", f"model.weights={weights}", "backend=torch", "passes=qkv_fusion", *RUN]
    pipe = runner.load([*common, "verify=true"])
    pipe.set_loras([str(lora)])
    result = pipe.generate()
    verified = result.report["passes"]["verified"]
    assert [v["pass"] for v in verified if v["component"] == "unet"] == ["qkv_fusion"]
    assert max_pixel_diff(np.stack(result.arrays), images([*common, lora_arg([(lora, 1.0)])])) == 0


def test_lora_saved_by_old_diffusers_attention_processors(tiny_weights, tmp_path):
    """`unet.<block>.attn1.processor.to_q_lora.down.weight` (diffusers before 0.20) is the same LoRA as the PEFT
    names of the same modules."""
    from safetensors.numpy import save_file

    weights = tiny_weights("tiny_sd15")
    stock = diffusers_pipeline("tiny_sd15", weights)
    pairs = pairs_for(stock, ("unet",), seed=4)["unet"]
    old = {}
    for name, (down, up) in pairs.items():
        block, _, module = name.rpartition(".attn")
        attn, _, proj = module.partition(".")
        proj = "to_out" if proj == "to_out.0" else proj
        stem = f"unet.{block}.attn{attn}.processor.{proj}_lora"
        old[f"{stem}.down.weight"], old[f"{stem}.up.weight"] = down, up
    save_file(old, str(tmp_path / "old.safetensors"))
    peft = write_peft(tmp_path / "peft.safetensors", {"unet": pairs})
    common = ["model=tiny_sd15", f"model.weights={weights}", "backend=torch", *RUN]
    assert max_pixel_diff(images([*common, lora_arg([(tmp_path / "old.safetensors", 1.0)])]),
                          images([*common, lora_arg([(peft, 1.0)])])) == 0  # fmt: skip
