"""Load a PyTorch-layout text encoder (transformers format, as the hub ships it) into a Paddle model.

paddlenlp's own `from_pretrained(..., convert_from_torch=True)` converts the weights and then saves a
`model_state.pdparams` copy into the checkpoint folder: it writes into the user's weights directory
(10+ GB for T5-XXL) and fails where that directory is read-only. This loader does the same
conversion (paddlenlp's name mappings, which also transpose Linear weights) in memory only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.loading import weight_files, with_module_prefix
from runner.errors import ConfigError


def rename_torch_text_state(cls: Any, config: Any, state: dict[str, Any]) -> dict[str, Any]:
    """PyTorch-layout (transformers) text-model weights renamed and transposed for the Paddle class `cls`, in
    place, by paddlenlp's name mappings; names no mapping covers stay as they are."""
    for mapping in cls._get_name_mappings(config):
        if mapping.source_name in state:
            state[mapping.target_name] = mapping.run(state, mapping.source_name)
    return state


def load_torch_layout_text_model(cls: Any, folder: Path) -> Any:
    """Build `cls` from the folder's config.json and fill it with the converted PyTorch weights."""
    from paddlenlp.transformers.model_utils import no_init_weights
    from paddlenlp.utils.serialization import load_torch

    config = cls.config_class.from_pretrained(str(folder))
    state: dict[str, Any] = {}
    for path in weight_files(folder):
        state.update(load_torch(str(path)))
    mappings = cls._get_name_mappings(config)
    state = with_module_prefix(state, {m.source_name for m in mappings})
    rename_torch_text_state(cls, config, state)
    with no_init_weights(_enable=True):
        model = cls(config)
    params = model.state_dict()
    expected = set(params)
    # Tied weights (T5's encoder.embed_tokens is `shared`) are saved once; a missing name whose
    # parameter is the same object as a present one is filled through that one.
    present = {id(params[k]): k for k in expected & set(state)}
    for key in expected - set(state):
        if id(params[key]) in present:
            state[key] = state[present[id(params[key])]]
    missing = sorted(expected - set(state))
    if missing:
        raise ConfigError(
            f"{folder}: the checkpoint lacks {len(missing)} weight(s) of {cls.__name__}, e.g. {missing[0]!r}"
        )
    model.set_state_dict({k: v for k, v in state.items() if k in expected})
    return model
