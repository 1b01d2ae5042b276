"""AUTOMATIC1111-style generation parameters ("infotext"), the `parameters` PNG text chunk that most image
tools (A1111, Forge, ComfyUI importers, civitai) read back:

    a red fox
    Negative prompt: blurry
    Steps: 25, Sampler: Euler a, CFG scale: 7.0, Seed: 3, Size: 512x512, Model: sd15
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The sampler names A1111 shows for the diffusers scheduler classes this project runs.
A1111_SAMPLERS = {
    "EulerAncestralDiscreteScheduler": "Euler a",
    "EulerDiscreteScheduler": "Euler",
    "FlowMatchEulerDiscreteScheduler": "Euler",
    "DDIMScheduler": "DDIM",
    "PNDMScheduler": "PLMS",
    "LMSDiscreteScheduler": "LMS",
    "HeunDiscreteScheduler": "Heun",
    "DPMSolverMultistepScheduler": "DPM++ 2M",
    "UniPCMultistepScheduler": "UniPC",
    "DDPMScheduler": "DDPM",
}


def sampler_label(class_name: str, config: Mapping[str, Any]) -> str:
    """A1111's name for a scheduler class and config (`DPM++ 2M Karras`); the class name when A1111 has none."""
    label = A1111_SAMPLERS.get(class_name, class_name)
    return f"{label} Karras" if config.get("use_karras_sigmas") else label


def infotext(
    *,
    prompt: str,
    negative_prompt: str | None,
    steps: int,
    sampler: str,
    guidance: float,
    seed: int,
    width: int,
    height: int,
    model: str,
) -> str:
    """The `parameters` text: prompt, `Negative prompt:` line (when there is one), then `key: value` pairs."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(
        f"Steps: {steps}, Sampler: {sampler}, CFG scale: {guidance:g}, Seed: {seed}, "
        f"Size: {width}x{height}, Model: {model}"
    )
    return "\n".join(lines)
