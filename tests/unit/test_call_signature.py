"""components/call_signature.py: calls and outputs flattened to tensors and back, and the weights digest."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from components.call_signature import flatten_call, flatten_output, rebuild_call, rebuild_output, weights_digest


def is_array(value: object) -> bool:
    return isinstance(value, np.ndarray)


class Output(OrderedDict):
    """Stands for a transformers/diffusers ModelOutput: an ordered mapping with its own class."""

    def __init__(self, **fields: object) -> None:
        super().__init__(**fields)


def test_call_structure_round_trips() -> None:
    a, b, c = np.ones(2), np.zeros(1), np.ones(3)
    leaves, structure = flatten_call((a, b), {"added": {"x": c, "flag": None}, "return_dict": False}, is_array)
    assert len(leaves) == 3
    args, kwargs = rebuild_call(structure, leaves)
    assert args[0] is a and args[1] is b and kwargs["added"]["x"] is c
    assert kwargs["added"]["flag"] is None and kwargs["return_dict"] is False
    _, other = flatten_call((a, np.zeros(2)), {"added": {"x": c, "flag": None}, "return_dict": False}, is_array)
    assert other != structure, "a new input shape must give a new signature (a new conversion)"
    _, cast = flatten_call((a, b.astype(np.float16)), {"added": {"x": c, "flag": None}, "return_dict": False}, is_array)
    assert cast != structure, "a new dtype must give a new signature"
    _, flag = flatten_call((a, b), {"added": {"x": c, "flag": 1}, "return_dict": False}, is_array)
    assert flag != structure, "a new constant must give a new signature"


def test_output_structure_round_trips_with_model_output_classes() -> None:
    h, p, s0, s1 = (np.full(2, float(i)) for i in range(4))
    value = Output(last_hidden_state=h, pooler_output=p, hidden_states=(s0, s1))
    leaves, structure = flatten_output(value, is_array)
    assert [x[0] for x in leaves] == [0.0, 1.0, 2.0, 3.0]
    back = rebuild_output(structure, [x + 10 for x in leaves])
    assert type(back) is Output and list(back) == ["last_hidden_state", "pooler_output", "hidden_states"]
    assert back["hidden_states"][1][0] == 13.0 and isinstance(back["hidden_states"], tuple)
    leaves, structure = flatten_output((h, None), is_array)
    assert len(leaves) == 1 and rebuild_output(structure, leaves)[1] is None


def test_output_of_another_kind_is_named() -> None:
    with pytest.raises(TypeError, match="got str"):
        flatten_output(("text",), is_array)


def test_weights_digest_follows_names_and_values_not_order() -> None:
    w = [("a", np.arange(4, dtype=np.float32)), ("b", np.ones((2, 2), dtype=np.float32))]
    assert weights_digest(w) == weights_digest(list(reversed(w)))
    assert weights_digest(w) != weights_digest([("a", w[0][1]), ("b", w[1][1] * 2)])
    assert weights_digest(w) != weights_digest([("c", w[0][1]), ("b", w[1][1])])
    assert weights_digest([("a", np.arange(4.0)[::2])]) == weights_digest([("a", np.array([0.0, 2.0]))])
