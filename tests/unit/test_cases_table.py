"""tests/support/cases.py lists every tiny model config once, and what a row says matches its config."""

from __future__ import annotations

import pytest

from runner.conf_index import CONF_DIR
from tests.support.cases import CASES, case, names
from tests.support.configs import compose_config


def test_every_tiny_config_has_a_row_and_every_row_a_config():
    configs = {path.stem for path in (CONF_DIR / "model").glob("tiny_*.yaml")}
    rows = {c.name for c in CASES}
    assert configs, f"no tiny model configs in {CONF_DIR / 'model'}"
    assert not configs - rows, f"tiny configs without a row in tests/support/cases.py: {sorted(configs - rows)}"
    assert not rows - configs, f"rows naming no conf/model/<name>.yaml: {sorted(rows - configs)}"


@pytest.mark.parametrize("name", names())
def test_row_matches_its_config(name):
    row = case(name)
    model = compose_config([f"model={name}"]).model
    assert model.name == name and model.family == row.family
    assert [stage.name for stage in model.stages] == list(row.stages)
    assert row.denoiser in model.components
    denoise = next(stage for stage in model.stages if stage.name == "denoise")
    assert (denoise.guidance == "cfg") == row.cfg
    encoders = [role for role in model.components if role.startswith("text_encoder")]
    expected = {"one_encoder": 1, "two_encoders": 2, "three_encoders": 3}
    assert [n for trait, n in expected.items() if trait in row.traits] == [len(encoders)]
    assert ("t5" in row.traits) == any(model.components[r].type == "t5_encoder" for r in encoders)
    assert ("flow_matching" in row.traits) == (model.scheduler.kind == "flow_match")
    assert ("discrete_time" in row.traits) == (model.scheduler.kind == "discrete")
    prediction = model.scheduler.config.get("prediction_type", "epsilon")
    assert ("v_prediction" in row.traits) == (prediction == "v_prediction")
    assert ("epsilon_prediction" in row.traits) == (row.denoiser == "unet" and prediction == "epsilon")
    denoiser_config = model.components[row.denoiser].config
    assert ("linear_projection" in row.traits) == bool(denoiser_config.get("use_linear_projection", False))
    assert ("guidance_embedding" in row.traits) == bool(denoiser_config.get("guidance_embeds", False))
    assert ("micro_conditioning" in row.traits) == ("size_conditioning" in row.stages)
    if "t5" in row.traits and "max_sequence_length" in row.stock_call:
        assert row.stock_call["max_sequence_length"] == model.max_sequence_length


def test_names_filters_and_refuses_unknown_traits_and_models():
    assert names() == [c.name for c in CASES]
    assert "tiny_sd21" in names(trait="v_prediction") and "tiny_sd15" not in names(trait="v_prediction")
    assert names(ppdiffusers_pipeline=False) == ["tiny_flux"]
    assert "tiny_sd15" not in names(exclude=("tiny_sd15",))
    with pytest.raises(ValueError, match="unknown trait"):
        names(trait="v-prediction")
    with pytest.raises(KeyError, match="no row for model 'tiny_sd99'"):
        case("tiny_sd99")
    with pytest.raises(KeyError):
        names(exclude=("tiny_sd99",))
