"""Pipeline directories saved by newer diffusers and transformers load on the Paddle engine and give the torch
engine's images.

tests/fixtures/saved_by_newer_libraries/ holds what diffusers 0.42 with transformers 5 write for each tiny
pipeline (versions.json), without the weights (scripts/write_saved_layout_fixtures.py). They differ from what
the older releases write in ways a loader notices: tokenizer folders hold tokenizer.json and
tokenizer_config.json only (no vocab.json/merges.txt, no spiece.model), a CLIPTextModel's weights are named
without the `text_model.` prefix, text encoder configs say `dtype` and carry new keys, scheduler configs carry
the options diffusers added since. Each directory is rebuilt here from those files, with the weights of this
environment's own save of the same tiny model under the names the newer libraries use, so both directories
hold the same model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.support.cases import case, names
from tests.support.runs import max_pixel_diff, runner_images

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "saved_by_newer_libraries"

pytestmark = pytest.mark.paddle


def _renamed(names_wanted: list[str], have: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The tensors of `have` under the wanted names: the same name, or the one that ends with it after a
    module prefix (transformers 4's `text_model.embeddings...` for transformers 5's `embeddings...`)."""
    out = {}
    for name in names_wanted:
        found = [k for k in have if k == name] or [k for k in have if k.endswith("." + name)]
        assert len(found) == 1, f"{name}: {found or 'no tensor'} in the older save"
        out[name] = have[found[0]]
    return out


def rebuild(model: str, older: Path, out: Path) -> Path:
    """The directory the newer libraries would have saved, with the weights of `older` (same model)."""
    from safetensors.numpy import load_file, save_file

    files = json.loads((FIXTURES / model / "files.json").read_text())
    for rel, entry in files.items():
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if "copy" in entry:
            shutil.copyfile(FIXTURES / model / entry["copy"], target)
        elif "shared" in entry:
            shutil.copyfile(FIXTURES / entry["shared"], target)
        else:
            layout = entry["safetensors"]
            tensors = _renamed(list(layout["tensors"]), load_file(str(older / rel)))
            for name, (dtype, shape) in layout["tensors"].items():
                assert list(tensors[name].shape) == shape and dtype == "F32", (rel, name)
            save_file(tensors, str(target), metadata=layout["metadata"])
    return out


def test_fixtures_are_the_newer_layout():
    """What the rebuilt directories exercise is there (a fixture refreshed by an older release would not)."""
    versions = json.loads((FIXTURES / "versions.json").read_text())
    assert int(versions["diffusers"].split(".")[1]) >= 42 and int(versions["transformers"].split(".")[0]) >= 5
    for model in names():
        files = json.loads((FIXTURES / model / "files.json").read_text())
        tokenizers = {rel.split("/")[0] for rel in files if rel.startswith("tokenizer")}
        for folder in tokenizers:
            assert sorted(r.split("/")[1] for r in files if r.startswith(folder + "/")) == [
                "tokenizer.json",
                "tokenizer_config.json",
            ]
    sd15 = json.loads((FIXTURES / "tiny_sd15" / "files.json").read_text())
    assert "embeddings.token_embedding.weight" in sd15["text_encoder/model.safetensors"]["safetensors"]["tensors"]


@pytest.mark.slow
@pytest.mark.parametrize("model", names())
def test_directories_saved_by_newer_libraries_give_the_same_images(tiny_weights, tmp_path, model):
    """Paddle on the newer layout gives the torch engine's images on it (cross-engine tolerance), and the torch
    engine gives on it exactly what it gives on this environment's own save of the same weights."""
    older = tiny_weights(model)
    newer = rebuild(model, older, tmp_path / model)
    common = [f"model={model}", "noise=numpy", "seed=21", "batch=2", "height=64", "width=48", "steps=3"]
    if case(model).cfg:
        common.append("negative_prompt=blurry")
    paddle_newer = runner_images([*common, f"model.weights={newer}", "backend=paddle"])
    torch_newer = runner_images([*common, f"model.weights={newer}", "backend=torch"])
    torch_older = runner_images([*common, f"model.weights={older}", "backend=torch"])
    assert paddle_newer.std() > 1.0
    assert max_pixel_diff(torch_newer, torch_older) == 0
    assert max_pixel_diff(paddle_newer, torch_newer) <= case(model).tolerances.cross_engine


def test_tokenizers_rebuilt_from_tokenizer_json_give_the_same_ids(tiny_weights, tmp_path):
    """The slow tokenizers of both engines, on folders with tokenizer.json only, give the ids they give on the
    vocab.json/merges.txt and spiece.model the older libraries write."""
    from components.engine_base import EngineBase
    from components.paddle.engine import COMPONENT_TYPES as PADDLE_TYPES
    from components.torch.engine import COMPONENT_TYPES as TORCH_TYPES
    from runner.registry import import_object
    from runner.schema import ComponentSpec

    older = tiny_weights("tiny_sd3")
    newer = rebuild("tiny_sd3", older, tmp_path / "sd3")
    texts = [
        "a photo of a cat",
        "  Two   spaces, UPPER case!  ",
        "caf\u00e9 na\u00efve \uff21\uff22 \u2014 123",
        "long " * 90,
    ]
    for types in (TORCH_TYPES, PADDLE_TYPES):
        for type_name, folder in (("clip_tokenizer", "tokenizer_2"), ("t5_tokenizer", "tokenizer_3")):
            ctype = types[type_name]
            spec = ComponentSpec(role=folder, type=type_name, path=folder, config={}, max_length=None)
            got = [
                EngineBase._load_tokenizer(ctype, import_object(ctype.cls), spec, str(root)) for root in (newer, older)
            ]
            assert got[0].model_max_length == got[1].model_max_length
            for text in texts:
                ids = [list(t(text, padding="max_length", max_length=40, truncation=True)["input_ids"]) for t in got]
                assert ids[0] == ids[1], (type_name, text)


def test_flow_match_options_of_newer_diffusers_give_its_schedules():
    """The Paddle FlowMatchEuler port follows shift_terminal, invert_sigmas and time_shift_type as diffusers 0.42
    computes them (its sigmas and timesteps, in the fixture)."""
    from components.paddle.schedulers import FlowMatchEulerDiscreteScheduler

    cases = json.loads((FIXTURES / "flow_match_schedules.json").read_text())
    assert set(cases) == {"shift_terminal", "invert_sigmas", "linear_time_shift", "exponential_time_shift"}
    for name, expected in cases.items():
        scheduler = FlowMatchEulerDiscreteScheduler(**expected["init"])
        scheduler.set_timesteps(**expected["set_timesteps"])
        np.testing.assert_allclose(scheduler.sigmas.numpy(), expected["sigmas"], atol=1e-6, err_msg=name)
        np.testing.assert_allclose(scheduler.timesteps.numpy(), expected["timesteps"], atol=1e-3, err_msg=name)


def test_scheduler_options_the_paddle_classes_lack_are_refused_only_when_they_change_the_schedule():
    """Options of diffusers' class that ppdiffusers' lacks are accepted at the value that changes nothing and
    refused otherwise; keys neither class has (another sampler's leftovers) are dropped as diffusers drops them."""
    from components.paddle.engine import PaddleEngine
    from runner.errors import ConfigError

    engine = PaddleEngine(device="cpu", dtype="float32")
    flux = json.loads((FIXTURES / "tiny_flux" / "scheduler" / "scheduler_config.json").read_text())
    assert "stochastic_sampling" in flux  # written by diffusers 0.42, absent from ppdiffusers 0.29's class
    engine.make_scheduler("FlowMatchEulerDiscreteScheduler", flux)
    euler = {"use_exponential_sigmas": False, "rescale_betas_zero_snr": False, "skip_prk_steps": True}
    engine.make_scheduler("EulerDiscreteScheduler", euler)
    dpm = {"use_flow_sigmas": False, "flow_shift": 3.0, "use_dynamic_shifting": False, "time_shift_type": "linear"}
    engine.make_scheduler("DPMSolverMultistepScheduler", dpm)
    for class_name, config, shown in (
        ("FlowMatchEulerDiscreteScheduler", {**flux, "use_karras_sigmas": True}, "use_karras_sigmas=True"),
        ("FlowMatchEulerDiscreteScheduler", {**flux, "stochastic_sampling": True}, "stochastic_sampling=True"),
        ("EulerDiscreteScheduler", {**euler, "use_exponential_sigmas": True}, "use_exponential_sigmas=True"),
        ("DPMSolverMultistepScheduler", {**dpm, "use_flow_sigmas": True}, "use_flow_sigmas=True"),
    ):
        with pytest.raises(
            ConfigError, match=rf"^scheduler config sets {shown}, which ppdiffusers [\d.]+'s {class_name}"
        ):
            engine.make_scheduler(class_name, config)
