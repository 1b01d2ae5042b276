"""The small helpers that delegate to libraries: safetensors for checkpoint headers and tensors,
hydra for "module:Attribute" imports."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file as save_numpy

from components.loading import _safetensors_format, folder_is_torch_format
from runner.errors import CapabilityError
from runner.registry import import_object

# ----------------------------------------------------------------- safetensors format detection


@pytest.mark.parametrize(
    ("metadata", "torch_layout"),
    [({"format": "pt"}, True), ({"format": "np"}, False), ({"format": "pd"}, False), (None, False)],
)
def test_transformers_safetensors_layout_comes_from_the_format_metadata(
    tmp_path: Path, metadata: dict[str, str] | None, torch_layout: bool
) -> None:
    # transformers writes format "pt"; Paddle (paddlenlp, ppdiffusers) writes "np" or "pd".
    save_numpy({"w": np.ones((2, 2), np.float32)}, tmp_path / "model.safetensors", metadata=metadata)
    assert _safetensors_format(tmp_path / "model.safetensors") == (metadata or {}).get("format")
    assert folder_is_torch_format(tmp_path) is torch_layout


def test_format_metadata_is_read_beside_other_metadata_and_no_tensors(tmp_path: Path) -> None:
    save_numpy({}, tmp_path / "model.safetensors", metadata={"format": "pt", "producer": "test"})
    assert _safetensors_format(tmp_path / "model.safetensors") == "pt"


# ----------------------------------------------------------------- safetensors into Paddle


@pytest.fixture(scope="module")
def paddle() -> ModuleType:
    # Imported the way the engine imports it (quiet environment first).
    from components.paddle.runtime import import_paddle

    return import_paddle()


def _torch_checkpoint() -> dict[str, Any]:
    torch = pytest.importorskip("torch")
    generator = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 4, generator=generator),
        "f16": torch.randn(2, 5, generator=generator).half(),
        "bf16": torch.randn(4, 3, generator=generator).bfloat16(),
        "i64": torch.arange(-3, 9, dtype=torch.int64).reshape(3, 4),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),  # zero elements: the hand-written path
    }


def _assert_same(paddle: ModuleType, loaded: dict[str, Any], expected: dict[str, Any]) -> None:
    import torch

    dtypes = {
        torch.float32: paddle.float32,
        torch.float16: paddle.float16,
        torch.bfloat16: paddle.bfloat16,
        torch.int64: paddle.int64,
    }
    assert set(loaded) == set(expected)
    for name, reference in expected.items():
        tensor = loaded[name]
        assert tensor.dtype == dtypes[reference.dtype], name
        assert list(tensor.shape) == list(reference.shape), name
        if reference.dtype == torch.bfloat16:
            # bf16 -> fp32 is exact on both sides, so equal fp32 values mean equal bf16 bits.
            np.testing.assert_array_equal(tensor.cast(paddle.float32).numpy(), reference.float().numpy(), name)
        else:
            np.testing.assert_array_equal(tensor.numpy(), reference.numpy(), name)


def test_reads_float32_float16_bfloat16_int64_into_paddle_exactly(tmp_path: Path, paddle: ModuleType) -> None:
    from safetensors.torch import save_file

    from components.paddle.safetensors_io import load_safetensors_folder

    checkpoint = _torch_checkpoint()
    save_file(checkpoint, tmp_path / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})
    state = load_safetensors_folder(tmp_path, "diffusion_pytorch_model")
    _assert_same(paddle, state, checkpoint)
    assert state["bf16"].dtype == paddle.bfloat16  # kept bf16, not widened


def test_sharded_checkpoint_is_merged_from_its_index(tmp_path: Path, paddle: ModuleType) -> None:
    from safetensors.torch import save_file

    from components.paddle.safetensors_io import load_safetensors_folder

    checkpoint = _torch_checkpoint()
    shards = {
        "m-00001-of-00002.safetensors": ["f32", "bf16", "empty"],
        "m-00002-of-00002.safetensors": ["f16", "i64", "scalar"],
    }
    weight_map = {}
    for shard, names in shards.items():
        save_file({name: checkpoint[name] for name in names}, tmp_path / shard)
        weight_map.update(dict.fromkeys(names, shard))
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _assert_same(paddle, load_safetensors_folder(tmp_path, "m"), checkpoint)


def test_unsupported_dtype_is_named(tmp_path: Path, paddle: ModuleType) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    from components.paddle.safetensors_io import read_safetensors

    save_file({"q": torch.zeros(2, dtype=torch.float8_e4m3fn)}, tmp_path / "f8.safetensors")
    with pytest.raises(ValueError, match=r"f8.safetensors: tensor q has unsupported dtype F8_E4M3"):
        read_safetensors(tmp_path / "f8.safetensors")


# ----------------------------------------------------------------- import_object


@pytest.fixture
def sample_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Two importable modules: one with a nested class, one that fails the way a missing framework does."""
    (tmp_path / "libhelpers_sample.py").write_text(
        "class Outer:\n    class Inner:\n        pass\n\n\nVALUE = 42\n", encoding="utf-8"
    )
    (tmp_path / "libhelpers_no_framework.py").write_text(
        "from runner.errors import CapabilityError\n\nraise CapabilityError('needs libx; install the x extra')\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in ("libhelpers_sample", "libhelpers_no_framework"):
        sys.modules.pop(name, None)


def test_import_object_colon_path() -> None:
    from components.loading import ComponentType

    assert import_object("components.loading:ComponentType") is ComponentType
    assert import_object("os.path:join") is __import__("os").path.join


def test_import_object_dotted_attribute(sample_modules: None) -> None:
    import libhelpers_sample  # type: ignore[import-not-found]

    assert import_object("libhelpers_sample:Outer.Inner") is libhelpers_sample.Outer.Inner
    assert import_object("libhelpers_sample:VALUE") == 42


def test_import_object_missing_parts_are_named(sample_modules: None) -> None:
    with pytest.raises(ImportError, match=r"'Missing' is importable from module 'libhelpers_sample'"):
        import_object("libhelpers_sample:Missing")
    with pytest.raises(ImportError, match=r"'Nope' is an attribute of 'libhelpers_sample.Outer'"):
        import_object("libhelpers_sample:Outer.Nope")
    with pytest.raises(ModuleNotFoundError, match=r"libhelpers_absent"):
        import_object("libhelpers_absent:Thing")
    with pytest.raises(ValueError, match=r"'package.module:Attribute'"):
        import_object("libhelpers_sample.Outer")


def test_import_object_lets_a_capability_error_through(sample_modules: None) -> None:
    # Engine modules raise CapabilityError at import when their framework is missing; the CLI
    # turns it into a one-line message, so it must not come back wrapped in an ImportError.
    with pytest.raises(CapabilityError, match=r"install the x extra"):
        import_object("libhelpers_no_framework:Thing")
