"""mode=batch in this process: prompt files (text and JSON Lines) and their errors, the manifest, grouping into
denoise batches, resume after an interrupted run, and the output folder's identity check.

Tolerance: a prompt drawn inside a denoise batch of 2 against the same prompt drawn alone (batch 1) differs by
at most 1 pixel level (the same kernels on another batch shape round differently; 0 measured on tiny_sd15).
A resumed prompt is compared exactly against the same batch drawn before: same kernels, same shapes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runner.api import Pipeline
from runner.batch import run_batch
from runner.batch.store import MANIFEST
from runner.errors import ConfigError
from runner.images import read_png_metadata
from tests.support.configs import compose_config
from tests.support.runs import REPO, max_pixel_diff, run_cli

COMMON = ["model=tiny_sd15", "backend=torch", "steps=2", "quiet=true"]
PROMPTS = ["a red circle on a blue background", "a green square on a white background",
           "a blue triangle on a black background", "a yellow circle on a green background"]  # fmt: skip


def batch(tmp_path: Path, prompts_file: Path | str | None, *overrides: str) -> dict:
    """run_batch into tmp_path/out (in this process); prompts_file None: the overrides give it (or not)."""
    given = [] if prompts_file is None else [f"mode.prompts_file={prompts_file}"]
    return run_batch(compose_config([*COMMON, "mode=batch", *given, f"mode.output_dir={tmp_path / 'out'}", *overrides]))


def manifest(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / MANIFEST).read_text().splitlines()]


def image(folder: Path, entry: dict) -> np.ndarray:
    return np.asarray(Image.open(folder / entry["file"]).convert("RGB"))


def text_file(tmp_path: Path, lines: list[str], name: str = "prompts.txt") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ errors, before loading
@pytest.mark.parametrize(
    "lines,message",
    [
        (['{"prompt": "a"}', "not json", '{"prompt": "b", "seed": "x"}', '{"prompt": "c", "size": 3}'],
         r"prompts.jsonl: 3 bad line\(s\): line 2: not JSON .*; line 3: .*seed.*; line 4: unknown key\(s\) 'size'; "
         r"a line sets: prompt, negative_prompt, seed"),
        (['{"prompt": "a", "height": 60}'], r"line 1: height=60 must be a positive multiple of 8 for model=tiny_sd15"),
        (['["a"]'], r"line 1: a JSON object is expected, not list"),
        (['{"seed": 3}'], r"line 1: prompt=None: each line needs one prompt, a string"),
        (['{"prompt": "a", "batch": 5}'], r"line 1: batch=5 images exceed mode.max_batch=4"),
        (["", "  "], r"prompts.jsonl has no prompts"),
    ],
)  # fmt: skip
def test_bad_prompt_files_name_their_lines_and_nothing_is_written(tmp_path, lines, message) -> None:
    path = text_file(tmp_path, lines, "prompts.jsonl")
    with pytest.raises(ConfigError, match=message) as info:
        batch(tmp_path, path)
    assert "\n" not in info.value.one_line()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["mode.prompts_file=null"], r"^mode=batch needs mode.prompts_file="),
        (["mode.prompts_file=/nonexistent/p.txt"], r"^mode.prompts_file=/nonexistent/p.txt does not exist"),
        (["mode.max_batch=0"], r"^mode.max_batch=0 must be >= 1"),
        (["mode.workers=0"], r"^mode.workers=0 must be >= 1"),
        (["mode.gpus_per_worker=-1"], r"^mode.gpus_per_worker=-1.0 must be >= 0"),
    ],
)
def test_bad_batch_settings_are_refused(tmp_path, overrides, message) -> None:
    path = text_file(tmp_path, PROMPTS)
    given = [] if any(o.startswith("mode.prompts_file=") for o in overrides) else [f"mode.prompts_file={path}"]
    with pytest.raises(ConfigError, match=message):
        batch(tmp_path, None, *given, *overrides)


def test_a_bad_prompts_file_exits_2_with_one_line(tmp_path) -> None:
    path = text_file(tmp_path, ['{"prompt": "a", "steps": 0}'], "p.jsonl")
    proc = run_cli([*COMMON, "mode=batch", f"mode.prompts_file={path}", f"mode.output_dir={tmp_path / 'out'}",
                    f"hydra.run.dir={tmp_path / 'run'}"])  # fmt: skip
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines()[-1]
        == f"error: mode.prompts_file={path}: 1 bad line(s): line 1: steps=0 must be >= 1"
    )
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ drawing
def test_every_prompt_is_drawn_as_alone_and_recorded(tmp_path) -> None:
    path = text_file(tmp_path, [PROMPTS[0], "", PROMPTS[1], PROMPTS[2]])
    report = batch(tmp_path, path, "seed=10", "mode.max_batch=2")
    folder = tmp_path / "out"
    entries = manifest(folder)
    assert report["drawn_prompts"] == 3 and report["batches"] == 2 and report["already_finished"] == 0
    assert [(e["line"], e["seed"], e["prompt"]) for e in entries] == [(1, 10, PROMPTS[0]), (3, 12, PROMPTS[1]),
                                                                      (4, 13, PROMPTS[2])]  # fmt: skip
    pipe = Pipeline.from_config(compose_config(COMMON))
    for entry in entries:
        alone = pipe.generate(entry["prompt"], seed=entry["seed"]).arrays[0]
        assert max_pixel_diff(image(folder, entry), alone) <= 1
        assert read_png_metadata(folder / entry["file"])["seed"] == str(entry["seed"])


def test_every_bad_line_is_numbered(tmp_path) -> None:
    path = text_file(tmp_path, ['{"prompt": "a", "steps": 0}'] * 8, "p.jsonl")
    with pytest.raises(ConfigError, match=r"8 bad line\(s\): line 1: steps=0 .*; line 5: steps=0 must be >= 1; "
                       r"and lines 6, 7, 8$"):  # fmt: skip
        batch(tmp_path, path)


def test_lines_end_at_newlines_only(tmp_path) -> None:
    """A prompt may hold U+2028 or a form feed (str.splitlines would cut it); a byte-order mark is dropped; a
    JSON line with "seed": null gets the line's default seed."""
    lines = [json.dumps({"prompt": "a red circle\u2028on blue", "seed": None}, ensure_ascii=False),
             json.dumps({"prompt": "a green\fsquare"}, ensure_ascii=False)]  # fmt: skip
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8"))
    batch(tmp_path, path, "seed=4")
    entries = manifest(tmp_path / "out")
    assert [(e["line"], e["prompt"], e["seed"]) for e in entries] == [(1, "a red circle\u2028on blue", 4),
                                                                      (2, "a green\fsquare", 5)]  # fmt: skip


def test_one_run_at_a_time_writes_a_folder(tmp_path) -> None:
    from runner.batch.store import BatchOutput

    holder = BatchOutput(tmp_path / "out", {"model": "x"})
    holder.open([])
    try:
        with pytest.raises(ConfigError, match=r"out is being written by another run"):
            batch(tmp_path, text_file(tmp_path, PROMPTS[:1]))
    finally:
        holder.close()
    batch(tmp_path, text_file(tmp_path, PROMPTS[:1]))  # released: the folder (without images) takes this batch


def test_json_lines_set_each_prompts_parameters(tmp_path) -> None:
    second = {"prompt": PROMPTS[1], "height": 32, "width": 48, "steps": 1, "negative_prompt": "blurry"}
    lines = [json.dumps({"prompt": PROMPTS[0], "seed": 5, "batch": 2}), json.dumps(second)]
    report = batch(tmp_path, text_file(tmp_path, lines, "p.jsonl"))
    folder = tmp_path / "out"
    entries = manifest(folder)
    assert report["drawn_images"] == 3 and report["batches"] == 2  # other size and steps: another denoise batch
    assert [(e["line"], e["index"], e["seed"]) for e in entries] == [(1, 0, 5), (1, 1, 5), (2, 0, 1)]
    assert image(folder, entries[2]).shape == (32, 48, 3)
    assert entries[2]["negative_prompt"] == "blurry" and entries[2]["steps"] == 1
    assert not np.array_equal(image(folder, entries[0]), image(folder, entries[1]))


# ------------------------------------------------------------------------------------------ resume
def test_a_rerun_draws_only_what_is_missing_or_changed(tmp_path) -> None:
    path = text_file(tmp_path, PROMPTS)
    batch(tmp_path, path, "mode.max_batch=1")
    folder = tmp_path / "out"
    first = {e["line"]: image(folder, e) for e in manifest(folder)}
    # An interrupted run: line 2's image lost with its manifest line torn mid-write, a temporary file left behind.
    kept = [json.dumps(e) for e in manifest(folder) if e["line"] != 2]
    (folder / MANIFEST).write_text("\n".join(kept) + '\n{"line": 2, "ind')
    (folder / "images" / "000002_00.png").unlink()
    (folder / "images" / ".000002_00.png.abc.tmp").write_bytes(b"half an image")
    # and line 4's prompt edited since
    text_file(tmp_path, [*PROMPTS[:3], "a white square on a red background"])
    report = batch(tmp_path, path, "mode.max_batch=1")
    assert (report["already_finished"], report["drawn_prompts"]) == (2, 2)
    entries = manifest(folder)
    assert [(e["line"], e["index"]) for e in entries] == [(1, 0), (2, 0), (3, 0), (4, 0)]  # one entry per image
    assert entries[3]["prompt"] == "a white square on a red background"
    assert not list((folder / "images").glob(".*.tmp"))
    again = {e["line"]: image(folder, e) for e in entries}
    for line in (1, 2, 3):
        assert np.array_equal(again[line], first[line]), f"line {line}"
    assert not np.array_equal(again[4], first[4])
    assert batch(tmp_path, path, "mode.max_batch=1")["drawn_prompts"] == 0


def test_a_folder_of_another_batch_is_refused_and_left_as_it_was(tmp_path) -> None:
    batch(tmp_path, text_file(tmp_path, PROMPTS[:2]))
    before = (tmp_path / "out" / MANIFEST).read_bytes()
    with pytest.raises(ConfigError, match=r"holds images of another batch \(it differs in scheduler\)"):
        batch(tmp_path, text_file(tmp_path, PROMPTS[:1], "other.txt"), "scheduler=euler")
    assert (tmp_path / "out" / MANIFEST).read_bytes() == before


@pytest.mark.slow
def test_a_killed_run_resumes_without_losing_or_duplicating_an_image(tmp_path) -> None:
    """SIGKILL (no cleanup at all) while drawing, then the same command again."""
    path = text_file(tmp_path, [f"{p} {i}" for i in range(6) for p in PROMPTS[:2]])
    folder = tmp_path / "out"
    args = [sys.executable, "-m", "runner", *COMMON, "steps=4", "mode=batch", f"mode.prompts_file={path}",
            f"mode.output_dir={folder}", "mode.max_batch=1", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if (folder / MANIFEST).is_file() and len((folder / MANIFEST).read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be interrupted"
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(60)
    # What the killed run left, before any rerun tidies it: each listed image once, whole, on disk.
    raw = [json.loads(line) for line in (folder / MANIFEST).read_text().split("\n") if line.strip().endswith("}")]
    keys = [(e["line"], e["index"]) for e in raw]
    assert len(keys) == len(set(keys)) and 3 <= len(keys) < 12
    for entry in raw:
        Image.open(folder / entry["file"]).verify()
    proc = run_cli(args[3:])
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((folder / "report.json").read_text())
    assert report["already_finished"] >= 3 and report["already_finished"] + report["drawn_prompts"] == 12
    entries = manifest(folder)
    assert sorted((e["line"], e["index"]) for e in entries) == [(line, 0) for line in range(1, 13)]
    for entry in entries:
        Image.open(folder / entry["file"]).verify()  # every file a whole PNG
