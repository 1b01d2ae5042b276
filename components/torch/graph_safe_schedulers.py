"""Graph-safe sampler steps: the stock diffusers steps with every per-step number precomputed as device tables.

A stock `scheduler.step` reads its step index from Python, indexes CPU tables and branches on the step
(first order at the first step, a different multistep formula at the end, ...). Captured in a CUDA graph
that would freeze the first step's numbers into every replay. Here `load` computes every per-step scalar on
the host once per generation, with the same float32 operations in the same order as the stock step, and
copies them into device tables; `step` gathers them with a step index that lives on the device (a 1-element
int64 tensor the captured iteration increments), and branches become `torch.where` selections by per-step
flags. The result is the stock step's arithmetic, operation for operation: on the CPU the latents equal the
stock scheduler's (tests/unit/test_graph_safe_schedulers.py checks 1e-6 and finds 0), and nothing in `step`
synchronizes with the host.

State a multistep sampler keeps (previous model outputs, PNDM's saved sample) lives in buffers updated in
place; ancestral noise is drawn for all steps at once, from the run's generator, in the order the stock
step draws it (`randn_tensor` once per step), so the same seed gives the same image.

Supported: the classes in SAMPLERS (euler, euler_a, ddim, dpmpp_2m, dpmpp_2m_karras, flow_euler, pndm with
skip_prk_steps); `unsupported` says why a configuration is not (thresholding, SDE variants, third order...).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

import torch


def at(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table[index] for a 1-element device index, without reading the index on the host: a 0-dim tensor
    for a 1-D table (0-dim, like the stock step's CPU scalars, so it does not promote a half-precision
    operand), one row for a 2-D one."""
    return table.index_select(0, index).squeeze(0)


def _host_table(values: list[torch.Tensor | float]) -> torch.Tensor:
    return torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in values])


class GraphSafeSampler(abc.ABC):
    """One stock scheduler class's step as device-indexed operations. `load(scheduler, generator)` once per
    generation (after `set_timesteps`), then `scale_input` / `timestep` / `step` per iteration with the
    device step index. Tables and state buffers keep their storage across loads of the same length, so an
    iteration captured once can be replayed for the next generation."""

    class_names: ClassVar[tuple[str, ...]] = ()
    prediction_types: ClassVar[tuple[str, ...]] = ("epsilon", "v_prediction")

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.tables: dict[str, torch.Tensor] = {}
        self.state: dict[str, torch.Tensor] = {}  # buffers the steps update in place
        self.config: Mapping[str, Any] = {}

    @classmethod
    def unsupported(cls, config: Mapping[str, Any]) -> str | None:
        """Why this sampler cannot reproduce a scheduler with `config`, or None."""
        prediction = config.get("prediction_type", "epsilon")
        if prediction not in cls.prediction_types:
            return f"prediction_type={prediction} (graph-safe: {', '.join(cls.prediction_types)})"
        if config.get("thresholding"):
            return "thresholding=true (dynamic thresholding)"
        return None

    def load(self, scheduler: Any, generator: Any = None) -> None:
        """Fill the tables for `scheduler`'s current timesteps and clear the state buffers."""
        self.config = scheduler.config
        host = {"timesteps": scheduler.timesteps, **self.host_tables(scheduler)}
        for name, values in host.items():
            values = values.to(self.device)
            current = self.tables.get(name)
            if current is not None and current.shape == values.shape and current.dtype == values.dtype:
                current.copy_(values)  # keep the storage a captured graph reads
            else:
                self.tables[name] = values
        for buffer in self.state.values():
            buffer.zero_()

    @abc.abstractmethod
    def host_tables(self, scheduler: Any) -> dict[str, torch.Tensor]:
        """Per-step values, one entry per timestep, computed as the stock step computes them."""

    def __len__(self) -> int:
        return len(self.tables["timesteps"])

    def timestep(self, index: torch.Tensor) -> torch.Tensor:
        """The denoiser's timestep input for this step (a 1-element tensor: it broadcasts like the stock 0-dim)."""
        return self.tables["timesteps"].index_select(0, index)

    def scale_input(self, sample: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return sample

    @abc.abstractmethod
    def step(self, model_output: torch.Tensor, sample: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The previous sample, as the stock `step(...)[0]`."""

    def _buffer(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """A state buffer shaped like `like`, created (zeroed) on first use: the first step runs eagerly
        before any capture, so buffers never get allocated inside a captured graph."""
        if name not in self.state:
            self.state[name] = torch.zeros_like(like)
        return self.state[name]


class _EulerFamily(GraphSafeSampler):
    """What the Euler samplers share: sigma tables, input scaling and the x0 prediction."""

    @staticmethod
    def sigma_tables(sigmas: torch.Tensor, steps: int) -> dict[str, torch.Tensor]:
        sigma = [sigmas[i] for i in range(steps)]
        return {
            "sigma": _host_table(sigma),
            "input_div": _host_table([(s**2 + 1) ** 0.5 for s in sigma]),  # scale_model_input
            "v_out": _host_table([-s / (s**2 + 1) ** 0.5 for s in sigma]),  # v-prediction to x0
            "v_div": _host_table([s**2 + 1 for s in sigma]),
        }

    def scale_input(self, sample: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return sample / at(self.tables["input_div"], index)

    def _x0(self, model_output: torch.Tensor, sample: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The prediction of the clean sample (sigma parametrisation)."""
        if self.config.prediction_type == "epsilon":
            return sample - at(self.tables["sigma"], index) * model_output
        return model_output * at(self.tables["v_out"], index) + sample / at(self.tables["v_div"], index)


class EulerSampler(_EulerFamily):
    """EulerDiscreteScheduler without churn (s_churn=0, what the pipelines use): gamma 0, sigma_hat = sigma."""

    class_names = ("EulerDiscreteScheduler",)

    def host_tables(self, scheduler: Any) -> dict[str, torch.Tensor]:
        sigmas, steps = scheduler.sigmas, len(scheduler.timesteps)
        sigma_hat = [sigmas[i] * (0.0 + 1) for i in range(steps)]
        return {
            **self.sigma_tables(sigmas, steps),
            "dt": _host_table([sigmas[i + 1] - sigma_hat[i] for i in range(steps)]),
        }

    def step(self, model_output: torch.Tensor, sample: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        sample = sample.to(torch.float32)
        x0 = self._x0(model_output, sample, index)
        derivative = (sample - x0) / at(self.tables["sigma"], index)
        return (sample + derivative * at(self.tables["dt"], index)).to(model_output.dtype)


class EulerAncestralSampler(_EulerFamily):
    """EulerAncestralDiscreteScheduler: Euler to sigma_down, then noise scaled by sigma_up (drawn up front)."""

    class_names = ("EulerAncestralDiscreteScheduler",)

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        self.generator: Any = None
        self.noise: torch.Tensor | None = None  # [steps, *latent shape], drawn once per generation

    def host_tables(self, scheduler: Any) -> dict[str, torch.Tensor]:
        sigmas, steps = scheduler.sigmas, len(scheduler.timesteps)
        up, down = [], []
        for i in range(steps):
            sigma_from, sigma_to = sigmas[i], sigmas[i + 1]
            sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
            up.append(sigma_up)
            down.append((sigma_to**2 - sigma_up**2) ** 0.5)
        tables = self.sigma_tables(sigmas, steps)
        tables["dt"] = _host_table([down[i] - sigmas[i] for i in range(steps)])
        tables["sigma_up"] = _host_table(up)
        return tables

    def load(self, scheduler: Any, generator: Any = None) -> None:
        super().load(scheduler, generator)
        self.generator = generator
        if self.noise is not None:  # an iteration captured before reads this storage: draw into it
            self._draw(self.noise.shape[1:], self.noise.dtype, into=self.noise)

    def _draw(self, shape: tuple, dtype: torch.dtype, into: torch.Tensor | None = None) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        # The stock step calls randn_tensor once per step with these arguments: the same numbers, in order.
        draws = [
            randn_tensor(tuple(shape), dtype=dtype, device=self.device, generator=self.generator)
            for _ in range(len(self))
        ]
        noise = torch.stack(draws)
        if into is None:
            return noise
        if into.shape != noise.shape:
            raise ValueError(f"ancestral noise of shape {tuple(noise.shape)} cannot refill {tuple(into.shape)}")
        return into.copy_(noise)

    def step(self, model_output: torch.Tensor, sample: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if self.noise is None or self.noise.shape[1:] != model_output.shape:
            self.noise = self._draw(model_output.shape, model_output.dtype)  # eager first step: before capture
        sample = sample.to(torch.float32)
        x0 = self._x0(model_output, sample, index)
        derivative = (sample - x0) / at(self.tables["sigma"], index)
        prev = sample + derivative * at(self.tables["dt"], index)
        prev = prev + at(self.noise, index) * at(self.tables["sigma_up"], index)
        return prev.to(model_output.dtype)


class DDIMSampler(GraphSafeSampler):
    """DDIMScheduler with eta=0 (deterministic, the pipelines' default), optional clip_sample."""

    class_names = ("DDIMScheduler",)
    prediction_types = ("epsilon", "v_prediction", "sample")

    def host_tables(self, scheduler: Any) -> dict[str, torch.Tensor]:
        ratio = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        sqrt_a, sqrt_b, sqrt_a_prev, direction = [], [], [], []
        for t in scheduler.timesteps:
            prev_t = t - ratio
            alpha = scheduler.alphas_cumprod[t]
            alpha_prev = scheduler.alphas_cumprod[prev_t] if prev_t >= 0 else scheduler.final_alpha_cumprod
            std_dev = 0.0 * scheduler._get_variance(t, prev_t) ** 0.5  # eta = 0
            sqrt_a.append(alpha**0.5)
            sqrt_b.append((1 - alpha) ** 0.5)
            sqrt_a_prev.append(alpha_prev**0.5)
            direction.append((1 - alpha_prev - std_dev**2) ** 0.5)
        return {
            "sqrt_alpha": _host_table(sqrt_a),
            "sqrt_beta": _host_table(sqrt_b),
            "sqrt_alpha_prev": _host_table(sqrt_a_prev),
            "direction": _host_table(direction),
        }

    def step(self, model_output: torch.Tensor, sample: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        sqrt_a, sqrt_b = at(self.tables["sqrt_alpha"], index), at(self.tables["sqrt_beta"], index)
        prediction = self.config.prediction_type
        if prediction == "epsilon":
            x0, eps = (sample - sqrt_b * model_output) / sqrt_a, model_output
        elif prediction == "sample":
            x0 = model_output
            eps = (sample - sqrt_a * x0) / sqrt_b
        else:
            x0 = sqrt_a * sample - sqrt_b * model_output
            eps = sqrt_a * model_output + sqrt_b * sample
        if self.config.clip_sample:
            x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        return at(self.tables["sqrt_alpha_prev"], index) * x0 + at(self.tables["direction"], index) * eps


class DPMSolverMultistepSampler(GraphSafeSampler):
    """DPMSolverMultistepScheduler, dpmsolver++ of order 1 or 2 (dpmpp_2m, dpmpp_2m_karras): both the first-
    and second-order updates are computed and a per-step flag picks one (first order at the first step and
    where the stock step lowers the order at the end); the previous x0 prediction is a state buffer."""

    class_names = ("DPMSolverMultistepScheduler",)
    prediction_types = ("epsilon", "v_prediction", "sample")

    @classmethod
    def unsupported(cls, config: Mapping[str, Any]) -> str | None:
        if config.get("algorithm_type", "dpmsolver++") != "dpmsolver++":
            return f"algorithm_type={config.get('algorithm_type')} (graph-safe: dpmsolver++)"
        if config.get("solver_order", 2) not in (1, 2):
            return f"solver_order={config.get('solver_order')} (graph-safe: 1, 2)"
        if config.get("variance_type") in ("learned", "learned_range"):
            return f"variance_type={config.get('variance_type')}"
        return super().unsupported(config)

    def host_tables(self, scheduler: Any) -> dict[str, torch.Tensor]:
        c, sigmas, steps = scheduler.config, scheduler.sigmas, len(scheduler.timesteps)
        to_alpha_sigma = scheduler._sigma_to_alpha_sigma_t
        names = ("alpha_s", "sigma_s", "first_a", "first_b", "second", "second_a", "second_b", "second_c", "r_inv")
        rows: dict[str, list] = {name: [] for name in names}
        for i in range(steps):
            alpha_s, sigma_s = to_alpha_sigma(sigmas[i])  # convert_model_output at this step
            rows["alpha_s"].append(alpha_s)
            rows["sigma_s"].append(sigma_s)
            alpha_t, sigma_t = to_alpha_sigma(sigmas[i + 1])
            h = (torch.log(alpha_t) - torch.log(sigma_t)) - (torch.log(alpha_s) - torch.log(sigma_s))
            rows["first_a"].append(sigma_t / sigma_s)
            rows["first_b"].append(alpha_t * (torch.exp(-h) - 1.0))
            lower_final = i == steps - 1 and (
                c.euler_at_final or (c.lower_order_final and steps < 15) or c.final_sigmas_type == "zero"
            )
            second = c.solver_order == 2 and i >= 1 and not lower_final
            rows["second"].append(float(second))
            if not second:  # zeros keep the unused branch finite (its sigma_{i-1} may not exist)
                for name in ("second_a", "second_b", "second_c", "r_inv"):
                    rows[name].append(0.0)
                continue
            alpha_s1, sigma_s1 = to_alpha_sigma(sigmas[i - 1])
            lambda_s0 = torch.log(alpha_s) - torch.log(sigma_s)
            h_0 = lambda_s0 - (torch.log(alpha_s1) - torch.log(sigma_s1))
            r0 = h_0 / h
            coefficient = alpha_t * (torch.exp(-h) - 1.0)
            rows["second_a"].append(sigma_t / sigma_s)
            rows["second_b"].append(coefficient)
            if c.solver_type == "midpoint":
                rows["second_c"].append(0.5 * coefficient)
            else:  # heun: "+ c * D1" is "- (-c) * D1" bit for bit
                rows["second_c"].append(-(alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)))
            rows["r_inv"].append(1.0 / r0)
        return {name: _host_table(values) for name, values in rows.items()}

    def step(self, model_output: torch.Tensor, sample: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        alpha_s, sigma_s = at(self.tables["alpha_s"], index), at(self.tables["sigma_s"], index)
        prediction = self.config.prediction_type
        if prediction == "epsilon":
            m0 = (sample - sigma_s * model_output) / alpha_s
        elif prediction == "v_prediction":
            m0 = alpha_s * sample - sigma_s * model_output
        else:
            m0 = model_output
        m1 = self._buffer("previous_x0", m0)
        sample = sample.to(torch.float32)
        first = at(self.tables["first_a"], index) * sample - at(self.tables["first_b"], index) * m0
        d1 = at(self.tables["r_inv"], index) * (m0 - m1)
        second = (
            at(self.tables["second_a"], index) * sample
            - at(self.tables["second_b"], index) * m0
            - at(self.tables["second_c"], index) * d1
        )
        prev = torch.where(at(self.tables["second"], index) > 0, second, first)
        m1.copy_(m0)
        return prev.to(model_output.dtype)


class FlowMatchEulerSampler(GraphSafeSampler):
    """FlowMatchEulerDiscreteScheduler (SD3, Flux), deterministic: x + (sigma_next - sigma) * v."""

    class_names = ("FlowMatchEulerDiscreteScheduler",)
    prediction_types = ("epsilon", "flow_prediction")  # the class ignores prediction_type

    @classmethod
    def unsupported(cls, config: Mapping[str, Any]) -> str | None:
        if config.get("stochastic_sampling"):
            return "stochastic_sampling=true"
        return None

    def host_tables(self, scheduler: Any) -> dict[str, torch.Tensor]:
        sigmas = scheduler.sigmas
        return {"dt": _host_table([sigmas[i + 1] - sigmas[i] for i in range(len(scheduler.timesteps))])}

    def step(self, model_output: torch.Tensor, sample: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        sample = sample.to(torch.float32)
        return (sample + at(self.tables["dt"], index) * model_output).to(model_output.dtype)


class PNDMSampler(GraphSafeSampler):
    """PNDMScheduler with skip_prk_steps (Stable Diffusion 1.x's default): linear multistep over up to four
    past noise predictions. The stock step picks its formula by a counter and the history's length; here
    every formula is computed and a per-step code selects one; the history and the saved sample are buffers."""

    class_names = ("PNDMScheduler",)

    @classmethod
    def unsupported(cls, config: Mapping[str, Any]) -> str | None:
        if not config.get("skip_prk_steps", False):
            return "skip_prk_steps=false (the Runge-Kutta warm-up steps)"
        return super().unsupported(config)

    def host_tables(self, scheduler: Any) -> dict[str, torch.Tensor]:
        ratio = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        rows: dict[str, list] = {n: [] for n in ("code", "append", "sqrt_a", "sqrt_b", "coeff", "diff", "denom")}
        history = 0
        for counter, timestep in enumerate(scheduler.timesteps):
            timestep, prev_t = timestep, timestep - ratio
            if counter != 1:
                history = min(history, 3) + 1
            else:
                prev_t, timestep = timestep, timestep + ratio
            code = 0 if counter == 0 else 1 if (history == 1 and counter == 1) else history
            rows["code"].append(float(code))
            rows["append"].append(float(counter != 1))
            alpha = scheduler.alphas_cumprod[timestep]
            alpha_prev = scheduler.alphas_cumprod[prev_t] if prev_t >= 0 else scheduler.final_alpha_cumprod
            beta, beta_prev = 1 - alpha, 1 - alpha_prev
            rows["sqrt_a"].append(alpha**0.5)
            rows["sqrt_b"].append(beta**0.5)
            rows["coeff"].append((alpha_prev / alpha) ** 0.5)
            rows["diff"].append(alpha_prev - alpha)
            rows["denom"].append(alpha * beta_prev**0.5 + (alpha * beta * alpha_prev) ** 0.5)
        return {name: _host_table(values) for name, values in rows.items()}

    def step(self, model_output: torch.Tensor, sample: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        e1, e2, e3 = (self._buffer(name, model_output) for name in ("ets_1", "ets_2", "ets_3"))
        saved = self._buffer("saved_sample", sample)
        code = at(self.tables["code"], index)
        mo = model_output
        candidates = (
            mo,
            (mo + e1) / 2,
            (3 * mo - e1) / 2,
            (23 * mo - 16 * e1 + 5 * e2) / 12,
            (1 / 24) * (55 * mo - 59 * e1 + 37 * e2 - 9 * e3),
        )
        eps = candidates[4]
        for k in (3, 2, 1, 0):
            eps = torch.where(code == k, candidates[k], eps)
        current = torch.where(code == 1, saved, sample)  # the second step restarts from the first's sample
        if self.config.prediction_type == "v_prediction":
            eps = at(self.tables["sqrt_a"], index) * eps + at(self.tables["sqrt_b"], index) * current
        prev = at(self.tables["coeff"], index) * current - at(self.tables["diff"], index) * eps / at(
            self.tables["denom"], index
        )
        saved.copy_(torch.where(code == 0, sample, saved))
        append = at(self.tables["append"], index) > 0
        e3.copy_(torch.where(append, e2, e3))
        e2.copy_(torch.where(append, e1, e2))
        e1.copy_(torch.where(append, mo, e1))
        return prev


SAMPLERS: tuple[type[GraphSafeSampler], ...] = (
    EulerSampler,
    EulerAncestralSampler,
    DDIMSampler,
    DPMSolverMultistepSampler,
    FlowMatchEulerSampler,
    PNDMSampler,
)


def sampler_class(class_name: str) -> type[GraphSafeSampler] | None:
    return next((s for s in SAMPLERS if class_name in s.class_names), None)


def why_not_graph_safe(class_name: str, config: Mapping[str, Any]) -> str | None:
    """None when a graph-safe sampler reproduces `class_name` with `config`; otherwise why not."""
    cls = sampler_class(class_name)
    if cls is None:
        return f"{class_name} has no graph-safe step"
    reason = cls.unsupported(config)
    return f"{class_name} with {reason} has no graph-safe step" if reason else None


def graph_safe_sampler(scheduler: Any, device: torch.device) -> GraphSafeSampler:
    reason = why_not_graph_safe(type(scheduler).__name__, scheduler.config)
    if reason:
        raise ValueError(reason)
    return sampler_class(type(scheduler).__name__)(device)  # type: ignore[misc]


def graph_safe_names() -> list[str]:
    return [name for cls in SAMPLERS for name in cls.class_names]
