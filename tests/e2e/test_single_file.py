"""Single-file checkpoints (model.weights=<file>.safetensors in the original SD 1.x / 2.x / XL layout).

Each tiny model is saved as a diffusers directory and written back as one original-layout file
(tests/support/single_file.py). diffusers' own converter must read that file as the directory (so the file
is what real checkpoints look like, independently of this project's converter); the runner's images from
the file must equal those from the directory, exactly, on both engines. Bad files are refused at planning,
with one line, before any weights load.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runner.errors import ConfigError
from runner.plan import plan_run
from tests.support.cases import slow_except
from tests.support.configs import compose_config
from tests.support.runs import max_pixel_diff, run_cli
from tests.support.single_file import save_pipeline, write_header_only, write_single_file

# model -> (single-file layout, architecture overrides). The tiny SDXL's second encoder is made wider than the
# first, as in SDXL (768 vs 1280): diffusers tells the two CLIP encoders of a file apart by their width, and a
# hidden size (48) unlike the projection size (32) checks that q/k/v are split by the former.
CASES = {
    "tiny_sd15": ("sd1", []),
    "tiny_sd21": ("sd2", []),
    "tiny_sdxl": (
        "sdxl",
        [
            "model.components.text_encoder_2.config.hidden_size=48",
            "model.components.unet.config.cross_attention_dim=80",
        ],
    ),
}
ROLES = ("unet", "vae", "text_encoder", "text_encoder_2")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory):
    """model -> (overrides, diffusers directory, single file of the same weights), made once per module."""
    root = tmp_path_factory.mktemp("single_file")
    made: dict[str, tuple[list[str], Path, Path]] = {}

    def get(model: str) -> tuple[list[str], Path, Path]:
        if model not in made:
            layout, extra = CASES[model]
            overrides = [f"model={model}", *extra]
            directory = save_pipeline(overrides, root / model)
            made[model] = (overrides, directory, write_single_file(directory, layout, root / f"{model}.safetensors"))
        return made[model]

    return get


@pytest.mark.parametrize("model", slow_except(CASES, "tiny_sd15", "tiny_sdxl"))
def test_diffusers_reads_the_written_file_as_the_directory(checkpoints, model):
    """The test's original-layout file is right: diffusers' from_single_file gives every weight of the directory."""
    import diffusers
    import torch

    _, directory, file = checkpoints(model)
    cls = diffusers.StableDiffusionXLPipeline if CASES[model][0] == "sdxl" else diffusers.StableDiffusionPipeline
    reference = cls.from_pretrained(str(directory))
    converted = cls.from_single_file(str(file), config=str(directory), local_files_only=True)
    compared = 0
    for role in ROLES:
        if getattr(reference, role, None) is None:
            continue
        want, got = getattr(reference, role).state_dict(), getattr(converted, role).state_dict()
        assert set(got) == set(want), role
        for key, tensor in want.items():
            assert not got[key].is_meta, f"{role}.{key} was not loaded by diffusers"
            assert torch.equal(got[key], tensor), f"{role}.{key}"
            compared += 1
    assert compared > 500


def aligned_images(overrides: list[str]) -> np.ndarray:
    """Images of a run whose torch weights sit in freshly allocated (aligned) memory.

    transformers memory-maps a directory's safetensors, so a weight can start at any byte offset; CPU kernels
    round the last bit of a matmul differently on unaligned data (measured: SDXL's pooled projection, 2e-7,
    one pixel level). A single file is copied into allocated tensors; copying the directory's weights the same
    way makes the comparison exact, which is the point of the test.
    """
    from runner.app import build_pipeline

    built = build_pipeline(plan_run(compose_config([*overrides, "quiet=true"])))
    for component in built.components.values():
        for param in getattr(component, "parameters", lambda: [])():
            if hasattr(param, "data_ptr"):  # torch; Paddle copies every weight it loads
                param.data = param.data.clone()
    return built.generate().state["images"]


@pytest.mark.parametrize(
    "model,engine",
    slow_except([(m, e) for m in CASES for e in ("torch", "paddle")], ("tiny_sd15", "paddle"), ("tiny_sdxl", "torch")),
)
def test_images_from_the_file_equal_images_from_the_directory(checkpoints, model, engine):
    overrides, directory, file = checkpoints(model)
    common = [*overrides, f"backend={engine}", "seed=7", "steps=2", "negative_prompt=blurry"]
    from_directory = aligned_images([*common, f"model.weights={directory}"])
    from_file = aligned_images([*common, f"model.weights={file}"])
    assert from_file.std() > 1.0
    assert max_pixel_diff(from_file, from_directory) == 0


def test_a_file_with_other_weights_gives_other_images(checkpoints, tmp_path):
    """The equality above is not vacuous: one weight changed in the file changes the images."""
    from safetensors.numpy import load_file, save_file

    overrides, _, file = checkpoints("tiny_sd15")
    tensors = load_file(str(file))
    tensors["model.diffusion_model.out.2.bias"] = tensors["model.diffusion_model.out.2.bias"] + 0.5
    changed = save_file(tensors, str(tmp_path / "changed.safetensors")) or tmp_path / "changed.safetensors"
    common = [*overrides, "backend=torch", "seed=7", "steps=2"]
    assert max_pixel_diff(aligned_images([*common, f"model.weights={file}"]),
                          aligned_images([*common, f"model.weights={changed}"])) > 5  # fmt: skip


def plan_for(weights: Path | str, model: str = "tiny_sd15") -> None:
    plan_run(compose_config([f"model={model}", f"model.weights={weights}"]), check_capabilities=False)


def test_a_file_of_another_family_is_named(checkpoints):
    _, _, sdxl_file = checkpoints("tiny_sdxl")
    with pytest.raises(ConfigError, match=r"holds a Stable Diffusion XL checkpoint but model=tiny_sd15 needs "
                                          r"Stable Diffusion 1\.x; use model=sdxl$"):  # fmt: skip
        plan_for(sdxl_file, "tiny_sd15")
    _, _, sd2_file = checkpoints("tiny_sd21")
    with pytest.raises(ConfigError, match=r"holds a Stable Diffusion 2\.x checkpoint but model=tiny_sdxl needs "
                                          r"Stable Diffusion XL; use model=sd21$"):  # fmt: skip
        plan_for(sd2_file, "tiny_sdxl")


def test_a_file_without_vae_or_text_encoder_is_refused_naming_them(checkpoints, tmp_path):
    _, directory, _ = checkpoints("tiny_sd15")
    unet_only = write_single_file(directory, "sd1", tmp_path / "unet_only.safetensors", parts=("unet",))
    with pytest.raises(ConfigError, match=r"lacks text_encoder \(cond_stage_model\.transformer\.\*\), vae "
                                          r"\(first_stage_model\.\*\): a single file must hold"):  # fmt: skip
        plan_for(unet_only)


@pytest.mark.parametrize(
    "names,message",
    [
        (["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"], r"holds a Stable Diffusion 3 checkpoint, "
         r"which is not supported as a single file; give a diffusers pipeline directory"),
        (["double_blocks.0.img_attn.norm.key_norm.scale"], r"holds a Flux checkpoint, which is not supported as a "
         r"single file"),
        (["model.diffusion_model.double_blocks.0.img_mod.lin.weight"], r"holds a Flux checkpoint"),
        (["conditioner.embedders.0.model.text_projection", "model.diffusion_model.label_emb.0.0.weight"],
         r"holds a Stable Diffusion XL refiner checkpoint"),
        (["down_blocks.0.resnets.0.conv1.weight"], r"holds one diffusers-layout model, not a whole original "
         r"checkpoint; give the diffusers pipeline directory"),
        (["some.tensor"], r"holds no Stable Diffusion checkpoint \(no model\.diffusion_model\.\* UNet weights\)"),
    ],
)  # fmt: skip
def test_files_of_unsupported_layouts_are_named(tmp_path, names, message):
    with pytest.raises(ConfigError, match=message):
        plan_for(write_header_only(tmp_path / "x.safetensors", names))


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickle_checkpoints_are_refused_without_being_opened(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"\x80\x04 not opened")  # a pickle is never read, so its content does not matter
    with pytest.raises(ConfigError, match=rf"is a pickle checkpoint \({suffix}\): pickle files can execute code "
                                          r"when loaded, so they are not loaded; convert it to \.safetensors, e\.g\. "
                                          r"python -c .*weights_only=True.*$"):  # fmt: skip
        plan_for(path)


TRUNCATED = b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}'  # 8 bytes of data, none written


@pytest.mark.parametrize(
    "content,message",
    [
        (None, r"model.weights='.*missing\.safetensors': no such file$"),
        (b"abc", r"is not a readable safetensors file: 3 bytes, shorter than a safetensors header$"),
        ((10**6).to_bytes(8, "little") + b"{}", r"is not a readable safetensors file: its header length \(1000000 "
         r"bytes\) does not fit the file \(10 bytes\)$"),
        ((4).to_bytes(8, "little") + b"{no}", r"is not a readable safetensors file: its header is not JSON"),
        (len(TRUNCATED).to_bytes(8, "little") + TRUNCATED,
         r"is not a readable safetensors file: tensor 'a' lies beyond the end of the file \(truncated\?\)$"),
    ],
)  # fmt: skip
def test_missing_or_corrupt_files_are_refused(tmp_path, content, message):
    path = tmp_path / ("missing.safetensors" if content is None else "bad.safetensors")
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        plan_for(path)


def test_models_without_a_single_file_layout_refuse_a_file(checkpoints):
    _, _, file = checkpoints("tiny_sd15")
    with pytest.raises(ConfigError, match=r"model=tiny_sd3 does not load from a single file; give a diffusers "
                                          r"pipeline directory"):  # fmt: skip
        plan_for(file, "tiny_sd3")


def test_the_cli_refuses_a_pickle_file_with_one_line_and_exit_2(tmp_path):
    path = tmp_path / "sd15.ckpt"
    path.write_bytes(b"not opened")
    proc = run_cli(["model=tiny_sd15", f"model.weights={path}", f"hydra.run.dir={tmp_path / 'run'}"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is a pickle checkpoint (.ckpt): pickle files can execute code" in errors[0], errors
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").rglob("*.png"))


def test_single_file_plan_takes_the_scheduler_from_the_model_yaml(checkpoints):
    overrides, _, file = checkpoints("tiny_sd21")
    plan = plan_run(compose_config([*overrides, f"model.weights={file}"]), check_capabilities=False)
    assert plan.scheduler.class_name == "DDIMScheduler"
    assert plan.scheduler.config["prediction_type"] == "v_prediction"
    assert plan.weights_path == file and plan.pipeline_config == {}


@pytest.mark.slow  # BF16 reading alone: tests/unit/test_single_file.py
def test_a_bf16_file_loads_as_the_float32_file_of_its_values(checkpoints, tmp_path):
    """BF16 (which NumPy lacks) is read exactly: the images equal those of an fp32 file holding the same values."""
    import torch
    from safetensors.torch import load_file, save_file

    overrides, _, file = checkpoints("tiny_sd15")
    tensors = load_file(str(file))
    bf16 = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(bf16, str(tmp_path / "bf16.safetensors"))
    save_file(
        {k: v.float() if v.is_floating_point() else v for k, v in bf16.items()}, str(tmp_path / "f32.safetensors")
    )
    common = [*overrides, "backend=paddle", "seed=7", "steps=2"]
    from_bf16 = aligned_images([*common, f"model.weights={tmp_path / 'bf16.safetensors'}"])
    assert from_bf16.std() > 1.0
    assert max_pixel_diff(from_bf16, aligned_images([*common, f"model.weights={tmp_path / 'f32.safetensors'}"])) == 0


@pytest.mark.parametrize("engine", ["torch", "paddle"])
def test_a_weight_of_another_shape_stops_the_load_naming_it(checkpoints, tmp_path, engine):
    """An inpainting-style UNet (9 input channels) under a 4-channel model config: one line, both shapes."""
    from safetensors.numpy import load_file, save_file

    from runner.app import load_pipeline

    overrides, _, file = checkpoints("tiny_sd15")
    tensors = load_file(str(file))
    weight = tensors["model.diffusion_model.input_blocks.0.0.weight"]
    tensors["model.diffusion_model.input_blocks.0.0.weight"] = np.concatenate([weight, weight[:, :1].repeat(5, 1)], 1)
    save_file(tensors, str(tmp_path / "inpaint.safetensors"))
    plan = plan_run(
        compose_config([*overrides, f"backend={engine}", f"model.weights={tmp_path / 'inpaint.safetensors'}"])
    )
    with pytest.raises(ConfigError, match=r"unet weight 'conv_in.weight' has shape \[32, 9, 3, 3\] in the file but "
                                          r"\[32, 4, 3, 3\] in the model config"):  # fmt: skip
        load_pipeline(plan)


def test_an_unknown_tokenizer_asset_is_refused_at_planning():
    with pytest.raises(ConfigError, match=r"^model.components.tokenizer.asset='clip_large' is not a bundled tokenizer; "
                                          r"bundled: clip, clip_bpe, t5$"):  # fmt: skip
        plan_run(compose_config(["model=tiny_sd15", "model.components.tokenizer.asset=clip_large"]))
