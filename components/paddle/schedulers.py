"""Paddle schedulers that ppdiffusers 0.29 lacks or has in an older form.

`FlowMatchEulerDiscreteScheduler`: ppdiffusers' version (SD3 era) has no resolution-dependent shift.
Flux needs diffusers' newer API: `use_dynamic_shifting` with base/max shift and sequence lengths in
the config, and `set_timesteps(sigmas=..., mu=...)`, where mu comes from the image sequence length.
Without dynamic shifting and custom sigmas it computes exactly what ppdiffusers' class computes (the
stepping is inherited), so SD3 keeps matching ppdiffusers' own pipeline. Of the options diffusers added since
(its schedulers save every one in scheduler_config.json), `time_shift_type`, `shift_terminal` and
`invert_sigmas` are followed here as diffusers 0.42 computes them; the sigma schedules (Karras, exponential,
beta) and stochastic sampling are not, and PaddleEngine.make_scheduler refuses them when they are on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import paddle

from components.paddle.runtime import import_ppdiffusers

# Through the engine's importer, which undoes ppdiffusers' import-time patches of torch and NumPy.
_ppdiffusers = import_ppdiffusers()
PPFlowMatchEuler = _ppdiffusers.FlowMatchEulerDiscreteScheduler
register_to_config = _ppdiffusers.configuration_utils.register_to_config


class FlowMatchEulerDiscreteScheduler(PPFlowMatchEuler):
    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float | None = 0.5,
        max_shift: float | None = 1.15,
        base_image_seq_len: int | None = 256,
        max_image_seq_len: int | None = 4096,
        invert_sigmas: bool = False,
        shift_terminal: float | None = None,
        time_shift_type: str = "exponential",
    ) -> None:
        if time_shift_type not in ("exponential", "linear"):
            raise ValueError(f"time_shift_type must be 'exponential' or 'linear', not {time_shift_type!r}")
        timesteps = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1].copy()
        sigmas = paddle.to_tensor(timesteps).astype(paddle.float32) / num_train_timesteps
        if not use_dynamic_shifting:
            # With dynamic shifting the shift depends on the resolution and is applied in set_timesteps.
            sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        self.timesteps = sigmas * num_train_timesteps
        self._step_index = None
        self._begin_index = None
        self.sigmas = sigmas
        self.sigma_min = self.sigmas[-1].item()
        self.sigma_max = self.sigmas[0].item()

    def time_shift(self, mu: float, sigma: float, t: np.ndarray) -> np.ndarray:
        if self.config.time_shift_type == "linear":
            return mu / (mu + (1 / t - 1) ** sigma)
        return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)

    def stretch_shift_to_terminal(self, t: np.ndarray) -> np.ndarray:
        """The schedule stretched so that its last sigma is `shift_terminal` (diffusers' method of that name)."""
        one_minus_z = 1 - t
        scale_factor = one_minus_z[-1] / (1 - self.config.shift_terminal)
        return 1 - (one_minus_z / scale_factor)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        sigmas: Sequence[float] | None = None,
        mu: float | None = None,
    ) -> None:
        if self.config.use_dynamic_shifting and mu is None:
            raise ValueError("set_timesteps needs mu when use_dynamic_shifting is on")
        if sigmas is None:
            self.num_inference_steps = num_inference_steps
            timesteps = np.linspace(
                self._sigma_to_t(self.sigma_max), self._sigma_to_t(self.sigma_min), num_inference_steps
            )
            sigmas = timesteps / self.config.num_train_timesteps
        else:
            sigmas = np.asarray(sigmas, dtype=np.float64)
            self.num_inference_steps = len(sigmas)
        if self.config.use_dynamic_shifting:
            sigmas = self.time_shift(mu, 1.0, sigmas)
        else:
            sigmas = self.config.shift * sigmas / (1 + (self.config.shift - 1) * sigmas)
        if self.config.shift_terminal:
            sigmas = self.stretch_shift_to_terminal(sigmas)
        sigmas = paddle.to_tensor(sigmas).astype(paddle.float32)
        if self.config.invert_sigmas:
            sigmas = 1.0 - sigmas
            self.timesteps = sigmas * self.config.num_train_timesteps
            self.sigmas = paddle.concat([sigmas, paddle.ones(shape=[1])])
        else:
            self.timesteps = sigmas * self.config.num_train_timesteps
            self.sigmas = paddle.concat([sigmas, paddle.zeros(shape=[1])])
        self._step_index = None
        self._begin_index = None
