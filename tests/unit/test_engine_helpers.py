"""Engine-level helpers: weight-layout detection, safetensors reading, import side effects."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from components.loading import folder_is_torch_format


def write_safetensors(path, tensors: dict, metadata: dict | None = None) -> None:
    header, blobs, offset = {}, [], 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))


def test_weight_layout_detection(tmp_path):
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    assert folder_is_torch_format(hub)
    paddle_saved = tmp_path / "paddle"
    paddle_saved.mkdir()
    write_safetensors(paddle_saved / "model.safetensors", {}, {"format": "np"})
    assert not folder_is_torch_format(paddle_saved)
    transformers_saved = tmp_path / "transformers"
    transformers_saved.mkdir()
    write_safetensors(transformers_saved / "model.safetensors", {}, {"format": "pt"})
    assert folder_is_torch_format(transformers_saved)


@pytest.mark.paddle
def test_safetensors_reader_keeps_bfloat16_bits(tmp_path):
    from components.paddle.runtime import import_paddle
    from components.paddle.safetensors_io import load_safetensors_folder

    paddle = import_paddle()
    values = np.array([1.0, -2.5, 3.140625], dtype=np.float32)
    bf16_bits = (values.view(np.uint32) >> 16).astype(np.uint16)  # exact: these values fit in bf16
    shard = {"w": ("BF16", [3], bf16_bits.tobytes()), "b": ("F32", [2], np.array([0.5, 1.5], np.float32).tobytes())}
    write_safetensors(tmp_path / "diffusion_pytorch_model.safetensors", shard)
    state = load_safetensors_folder(tmp_path, "diffusion_pytorch_model")
    assert state["w"].dtype == paddle.bfloat16
    np.testing.assert_array_equal(state["w"].cast(paddle.float32).numpy(), values)
    np.testing.assert_array_equal(state["b"].numpy(), [0.5, 1.5])


@pytest.mark.paddle
def test_missing_shard_is_named(tmp_path):
    from components.paddle.safetensors_io import load_safetensors_folder

    index = {"weight_map": {"a": "m-00001.safetensors", "b": "m-00002.safetensors"}}
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps(index))
    write_safetensors(tmp_path / "m-00001.safetensors", {"a": ("F32", [1], np.zeros(1, np.float32).tobytes())})
    with pytest.raises(FileNotFoundError, match=r"m-00002.safetensors is missing"):
        load_safetensors_folder(tmp_path, "m")


@pytest.mark.paddle
def test_importing_ppdiffusers_leaves_torch_and_numpy_intact():
    """ppdiffusers rebinds torch.uint16, np.bool and np.bfloat16 on import; the engine undoes it
    (torch.compile and NumPy's testing helpers need the real ones)."""
    import torch

    from components.paddle.runtime import import_ppdiffusers

    import_ppdiffusers()
    assert torch.iinfo(torch.uint16).max == 65535
    assert np.bool is np.bool_ and not hasattr(np, "bfloat16")


def test_atomic_writes_leave_no_temporary_file_and_normal_permissions(tmp_path):
    import os

    from runner.files import write_atomic, write_json_atomic

    target = tmp_path / "report.json"
    write_json_atomic(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask

    def failing(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, failing)
    assert json.loads(target.read_text()) == {"a": 1}, "the earlier file was damaged"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


@pytest.mark.paddle
def test_eager_paddle_on_cpu_uses_every_core_it_may(monkeypatch):
    """Eager Paddle ran its CPU kernels on one thread; the engine sets the math library's thread count
    (OMP_NUM_THREADS when given, else the cores this process may use), as Paddle Inference's config does."""
    import os

    from components.paddle import engine as paddle_engine
    from components.paddle.runtime import cpu_threads

    calls = []
    monkeypatch.setattr(paddle_engine.paddle.base.core, "set_num_threads", calls.append)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    paddle_engine.PaddleEngine(device="cpu", dtype="float32")
    assert calls == [len(os.sched_getaffinity(0))]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads() == 3
    paddle_engine.PaddleEngine(device="cpu", dtype="float32")
    assert calls[-1] == 3
