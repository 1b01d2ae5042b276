"""Train a shapes model from scratch on the CPU and write it in diffusers layout.

    python scripts/train_shapes.py --family sd --out /tmp/shapes_sd      # about 25 min on 2 cores
    python scripts/train_shapes.py --family flux --out /tmp/shapes_flux
    python -m runner model=shapes_sd15 model.weights=/tmp/shapes_sd prompt="a green square on a white background"

The architecture is the model config's (conf/model/shapes_sd15.yaml, shapes_flux.yaml); images and captions
are drawn on the fly from runner/shapes.py. Three phases: the VAE learns to reconstruct the images (its latent
scale, and for Flux its shift, are then measured and written into its config); for SD the CLIP text encoder then
learns contrastively, as CLIP's was trained, against a small image tower reading the frozen VAE's latents (the
tower is thrown away); then the denoiser learns on those latents: v-prediction with 10% empty captions for SD
(classifier-free guidance; its text encoder stays frozen, as SD's CLIP does), flow matching for Flux (its CLIP
and T5 encoders learn with the transformer). An exponential moving average of the denoiser-phase weights is
shipped.

Deterministic for a given --seed and thread count. Every --save-every steps the full training state goes to
OUT/train_state.pt (atomically) and the pipeline is exported to OUT/; a run that finds OUT/train_state.pt
resumes from it (--fresh starts over).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components.loading import bundled_tokenizer  # noqa: E402
from components.stages.latents import image_position_ids, pack_latents  # noqa: E402
from runner.shapes import PHRASINGS, SHAPES, Scene, caption, random_scene, render  # noqa: E402

LATENT_CACHE = 8192  # scenes encoded once for the denoiser phase: encoding every batch took a fifth of a step
MODELS = {"sd": "shapes_sd15", "flux": "shapes_flux"}
# The text phase's scenes come in sets: one scene drawn as each shape, same colours, size and place. A batch of
# random scenes almost never holds a square and a circle of the same colours, so nothing would make the text
# encoder tell the two words apart (it did not: their embeddings stayed within a fifth of a triangle's distance).
SHAPE_SETS = 1024
# Per family: VAE steps, denoiser steps, batch sizes, learning rates. Sized for under an hour on 2 cores.
COMMON = {
    "latent_cache": LATENT_CACHE,
    "shape_sets": SHAPE_SETS,
    "vae_batch": 16,
    "vae_crop": 32,
    "vae_lr": 3e-3,
    "batch": 32,
    "lr": 1e-3,
    "text_batch": 128,
    "text_lr": 1e-3,
}
PLANS = {
    "sd": {**COMMON, "vae_steps": 2500, "text_steps": 1500, "steps": 4000},
    "flux": {**COMMON, "vae_steps": 2000, "text_steps": 0, "steps": 2500},
}
# Phase -> (plan key of its step count, plan key of its peak learning rate).
PHASES = {"vae": ("vae_steps", "vae_lr"), "text": ("text_steps", "text_lr"), "denoiser": ("steps", "lr")}
# SD timesteps: this share of each batch is drawn from [low, high) instead of the whole range. There (SNR ~9 down
# to ~0.09 on the linear schedule) the outline of the shape is decided; above it the 8x8 latent is nearly pure
# noise and only the colours matter, which the model learns within a few hundred steps anyway.
T_FOCUS = {"share": 0.5, "low": 100, "high": 500}
CAPTION_DROP = {"sd": 0.1, "flux": 0.0}  # empty captions teach the unconditional branch that CFG needs
KL_WEIGHT = 1e-6  # small: a larger weight keeps the posterior noisy, and the decoder learns to blur
EMA_DECAY = 0.999
SIDE = 64
CONTRAST_DIM = 64  # the shared embedding of the contrastive text phase, as CLIP's projection_dim


def model_config(name: str) -> dict:
    with open(ROOT / "conf" / "model" / f"{name}.yaml", encoding="utf-8") as f:
        return yaml.safe_load(f)


def draw_scenes(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, list[Scene]]:
    """n random scenes, rendered as a (n, 3, 64, 64) tensor in [-1, 1]."""
    scenes = [random_scene(rng) for _ in range(n)]
    return to_pixels([render(scene, SIDE, rng) for scene in scenes]), scenes


def to_pixels(images: list[np.ndarray]) -> torch.Tensor:
    """H x W x 3 uint8 images as one (n, 3, H, W) tensor in [-1, 1], as the VAE takes them."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def captions(rng: np.random.Generator, scenes: list[Scene], drop: float) -> list[str]:
    """A caption of each scene in a random phrasing, or "" with probability `drop`."""
    texts = [caption(scene, int(rng.integers(PHRASINGS))) for scene in scenes]
    return ["" if rng.random() < drop else text for text in texts]


class ContrastiveHeads(torch.nn.Module):
    """CLIP's objective for the text phase: a text projection, an image tower and a learned temperature.

    The image tower reads the VAE's latents, not pixels: what the text encoder learns to tell apart is then what
    the denoiser's inputs tell apart (a square from a circle is a small difference there), and the latents are
    cached already. Only the text encoder is kept; these heads are thrown away after the phase.
    """

    def __init__(self, text_width: int, latent_channels: int) -> None:
        super().__init__()
        act = torch.nn.SiLU
        self.image = torch.nn.Sequential(
            torch.nn.Conv2d(latent_channels, 64, 3, padding=1), act(),
            torch.nn.Conv2d(64, 64, 3, padding=1), act(),
            torch.nn.Conv2d(64, 128, 3, stride=2, padding=1), act(),
            torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),  # 2x2 keeps where the shape is (position words)
            torch.nn.Linear(4 * 128, CONTRAST_DIM),
        )  # fmt: skip
        self.text = torch.nn.Linear(text_width, CONTRAST_DIM, bias=False)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature

    def forward(self, pooled: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Symmetric cross-entropy over the batch: caption i belongs to latent i."""
        text = F.normalize(self.text(pooled), dim=-1)
        image = F.normalize(self.image(latents), dim=-1)
        logits = self.logit_scale.clamp(max=math.log(100)).exp() * text @ image.T
        labels = torch.arange(len(logits))
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class Trainer:
    def __init__(self, family: str, out: Path, seed: int, plan: dict) -> None:
        from diffusers import AutoencoderKL

        self.family, self.out, self.plan, self.seed = family, out, plan, seed
        self.cfg = model_config(MODELS[family])
        comps = self.cfg["components"]
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.vae = AutoencoderKL(**comps["vae"]["config"])
        self.modules = self.build_denoiser(comps)  # name -> module trained in phase 2
        self.ema = {name: copy.deepcopy(m).requires_grad_(False) for name, m in self.modules.items()}
        self.phase, self.step = "vae", 0
        self.optimizer = torch.optim.AdamW(self.vae.parameters(), lr=plan["vae_lr"], weight_decay=0.0)

    def build_denoiser(self, comps: dict) -> dict[str, torch.nn.Module]:
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

        self.tokenizer = CLIPTokenizer.from_pretrained(bundled_tokenizer("clip"))
        modules = {"text_encoder": CLIPTextModel(CLIPTextConfig(**comps["text_encoder"]["config"]))}
        if self.family == "sd":
            from diffusers import UNet2DConditionModel

            modules["unet"] = UNet2DConditionModel(**comps["unet"]["config"])
        else:
            from diffusers import FluxTransformer2DModel
            from transformers import T5Config, T5EncoderModel, T5Tokenizer

            self.tokenizer_2 = T5Tokenizer.from_pretrained(bundled_tokenizer("t5"), legacy=True)
            modules["text_encoder_2"] = T5EncoderModel(T5Config(**comps["text_encoder_2"]["config"]))
            modules["transformer"] = FluxTransformer2DModel(**comps["transformer"]["config"])
        return modules

    # ---- phase 1: the VAE -------------------------------------------------------------------------------
    def vae_step(self) -> float:
        # 32x32 crops: the VAE is convolutional, and a quarter of the pixels costs a quarter of the time.
        # The last fifth sees whole images (half the batch): borders and the mid-block attention at full size.
        whole = self.step >= 0.8 * self.plan["vae_steps"]
        crop = SIDE if whole else self.plan["vae_crop"]
        full, _ = draw_scenes(self.rng, self.plan["vae_batch"] // 2 if whole else self.plan["vae_batch"])
        at = self.rng.integers(0, SIDE - crop + 1, size=(len(full), 2))
        images = torch.stack([img[:, y : y + crop, x : x + crop] for img, (y, x) in zip(full, at)])
        posterior = self.vae.encode(images).latent_dist
        recon = self.vae.decode(posterior.sample()).sample
        loss = F.mse_loss(recon, images) + KL_WEIGHT * posterior.kl().mean()
        return self.update(loss, self.vae.parameters())

    def measure_latents(self) -> None:
        """Scale (and for Flux shift) so the denoiser sees latents of mean 0 and std 1, as SD's VAEs ship."""
        with torch.no_grad():
            latents = torch.cat([self.vae.encode(draw_scenes(self.rng, 64)[0]).latent_dist.mean for _ in range(4)])
        shift = float(latents.mean()) if self.family == "flux" else 0.0
        std = float((latents - shift).std())
        self.vae.register_to_config(scaling_factor=round(1.0 / std, 5))
        if self.family == "flux":
            self.vae.register_to_config(shift_factor=round(shift, 5))
        self.vae.requires_grad_(False).eval()

    def encode_cache(self) -> None:
        """Encode plan["latent_cache"] scenes with the frozen VAE; denoiser batches draw from them.

        The scenes come from their own generator seeded by --seed, so a resumed run rebuilds the same cache.
        Each draw takes a fresh sample of the posterior and a fresh caption, so repeats are not identical.
        """
        rng = np.random.default_rng(self.seed + 1)
        self.cache_scenes: list[Scene] = []
        means, stds = [], []
        total = self.plan["latent_cache"]
        for start in tqdm(range(0, total, 64), desc="encoding scenes", mininterval=5):
            images, scenes = draw_scenes(rng, min(64, total - start))
            with torch.no_grad():
                posterior = self.vae.encode(images).latent_dist
            means.append(posterior.mean)
            stds.append(posterior.std)
            self.cache_scenes += scenes
        self.cache_mean, self.cache_std = torch.cat(means), torch.cat(stds)

    def cached_batch(self, n: int, drop: float) -> tuple[torch.Tensor, list[str]]:
        """n scaled latents (posterior samples) of cached scenes, and their captions."""
        idx = self.rng.integers(len(self.cache_scenes), size=n)
        sample = self.cache_mean[idx] + self.cache_std[idx] * torch.randn_like(self.cache_mean[idx])
        return self.scaled(sample), captions(self.rng, [self.cache_scenes[i] for i in idx], drop)

    def scaled(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE latents as the denoiser sees them (shifted and scaled by the VAE's config)."""
        cfg = self.vae.config
        return (latents - (getattr(cfg, "shift_factor", None) or 0.0)) * cfg.scaling_factor

    def timesteps(self, n: int) -> torch.Tensor:
        """n training timesteps: T_FOCUS["share"] of them from the focus range, the rest from the whole range."""
        whole = torch.randint(0, self.noise_schedule.config.num_train_timesteps, (n,))
        focus = torch.randint(T_FOCUS["low"], T_FOCUS["high"], (n,))
        return torch.where(torch.rand(n) < T_FOCUS["share"], focus, whole)

    # ---- phase 2: the CLIP text encoder, contrastively ------------------------------------------------------
    def encode_shape_sets(self) -> None:
        """plan["shape_sets"] scenes, each drawn as every shape in one place, as scaled VAE latents (mean)."""
        rng = np.random.default_rng(self.seed + 2)
        self.set_scenes: list[Scene] = []
        latents = []
        total = self.plan["shape_sets"]
        for start in tqdm(range(0, total, 32), desc="encoding shape sets", mininterval=5):
            images = []
            for _ in range(min(32, total - start)):
                base, place = random_scene(rng), int(rng.integers(2**32))
                for shape in SHAPES:
                    self.set_scenes.append(dataclasses.replace(base, shape=shape))
                    images.append(render(self.set_scenes[-1], SIDE, np.random.default_rng(place)))
            with torch.no_grad():
                latents.append(self.vae.encode(to_pixels(images)).latent_dist.mean)
        self.set_latents = self.scaled(torch.cat(latents))

    def prepare_text(self) -> None:
        self.encode_shape_sets()
        self.heads = ContrastiveHeads(self.modules["text_encoder"].config.hidden_size, self.vae.config.latent_channels)
        self.trained_params = [*self.modules["text_encoder"].parameters(), *self.heads.parameters()]
        self.optimizer = torch.optim.AdamW(self.trained_params, lr=self.plan["text_lr"], weight_decay=0.01)

    def text_step(self) -> float:
        """Captions against latents, for text_batch / 3 shape sets: each caption's hardest negatives are its own
        scene drawn as the other shapes."""
        n = len(SHAPES)
        sets = self.rng.integers(self.plan["shape_sets"], size=max(1, self.plan["text_batch"] // n))
        idx = (sets[:, None] * n + np.arange(n)).ravel()
        texts = captions(self.rng, [self.set_scenes[i] for i in idx], 0.0)
        pooled = self.modules["text_encoder"](self.clip_ids(texts)).pooler_output
        loss = self.heads(pooled, self.set_latents[idx])
        return self.update(loss, self.trained_params)

    # ---- phase 3: denoiser + text encoders ----------------------------------------------------------------
    def clip_ids(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        return tokens.input_ids

    def denoiser_step(self) -> float:
        x0, texts = self.cached_batch(self.plan["batch"], CAPTION_DROP[self.family])
        noise = torch.randn_like(x0)
        m = self.modules
        if self.family == "sd":
            t = self.timesteps(x0.shape[0])
            noisy = self.noise_schedule.add_noise(x0, noise, t)
            with torch.set_grad_enabled("text_encoder" in self.denoiser_modules):
                states = m["text_encoder"](self.clip_ids(texts))[0]
            pred = m["unet"](noisy, t, encoder_hidden_states=states).sample
            # v-prediction: at low SNR the target is mostly the clean latent, so the colours and the layout,
            # which the prompt decides there, carry the loss (noise prediction gives them almost no weight).
            target = self.noise_schedule.get_velocity(x0, noise, t) if self.v_prediction else noise
            loss = F.mse_loss(pred, target)
        else:
            n, c, h, w = x0.shape
            sigma = torch.sigmoid(torch.randn(n))  # logit-normal, as SD3 and Flux train
            s = sigma.view(n, 1, 1, 1)
            # The runner's own packing and position ids (components/stages/latents.py), not FluxPipeline's private
            # helpers: diffusers changed what _prepare_latent_image_ids takes (0.31 halved height and width
            # itself, newer releases take them halved), and these are the inputs inference feeds the model.
            noisy = pack_latents((1 - s) * x0 + s * noise)
            target = pack_latents(noise - x0)
            pooled = m["text_encoder"](self.clip_ids(texts)).pooler_output
            ids2 = self.tokenizer_2(texts, padding="max_length", max_length=self.cfg["max_sequence_length"],
                                    truncation=True, return_tensors="pt").input_ids  # fmt: skip
            states = m["text_encoder_2"](ids2)[0]
            pred = m["transformer"](
                hidden_states=noisy,
                timestep=sigma,
                pooled_projections=pooled,
                encoder_hidden_states=states,
                txt_ids=torch.zeros(states.shape[1], 3),
                img_ids=torch.from_numpy(image_position_ids(h, w)),
            ).sample
            loss = F.mse_loss(pred, target)
        loss_value = self.update(loss, self.trained_params)
        decay = min(EMA_DECAY, (1 + self.step) / (10 + self.step))  # warm-up: forget the random init
        with torch.no_grad():
            for name in self.denoiser_modules:
                mod = m[name]
                for e, p in zip(self.ema[name].parameters(), mod.parameters()):
                    e.lerp_(p, 1 - decay)
        return loss_value

    def reuse_vae(self, pipeline_dir: Path) -> None:
        """Skip the VAE phase: take an exported pipeline's VAE (with its measured latent scale)."""
        from diffusers import AutoencoderKL

        self.vae = AutoencoderKL.from_pretrained(pipeline_dir / "vae")
        self.enter("text", measured=True)

    def leave_vae(self, measured: bool) -> None:
        """The VAE phase's end: its latent scale measured (unless it came with one), frozen, the cache encoded."""
        if measured:
            self.vae.requires_grad_(False).eval()
        else:
            self.measure_latents()
        self.encode_cache()

    def enter(self, phase: str, measured: bool = False) -> None:
        """Start `phase` ("text" or "denoiser") where the one before it ended (measured: a VAE that already
        carries its latent scale, from --vae-from)."""
        if self.phase == "vae":
            self.leave_vae(measured)
        if phase == "denoiser":
            # The average starts from the weights the denoiser phase starts from, not from the random init.
            self.ema = {name: copy.deepcopy(m).requires_grad_(False) for name, m in self.modules.items()}
        self.phase, self.step = phase, 0
        if phase == "denoiser":
            self.prepare_denoiser()
        elif self.plan["text_steps"] > 0:  # a plan without the text phase (Flux) builds nothing for it
            self.prepare_text()

    def scheduler_config(self) -> dict:
        return dict(self.cfg["scheduler"]["config"])

    # ---- shared ---------------------------------------------------------------------------------------
    def update(self, loss: torch.Tensor, params) -> float:
        steps_key, lr_key = PHASES[self.phase]
        total, lr = self.plan[steps_key], self.plan[lr_key]
        warm = min(1.0, (self.step + 1) / 200)
        decay = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, self.step / total)))  # cosine to 10%
        for group in self.optimizer.param_groups:
            group["lr"] = lr * warm * decay
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        self.optimizer.step()
        return loss.item()

    def state(self) -> dict:
        return {
            "family": self.family,
            "phase": self.phase,
            "step": self.step,
            "vae": self.vae.state_dict(),
            "vae_config": dict(self.vae.config),
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "ema": {k: m.state_dict() for k, m in self.ema.items()},
            "heads": self.heads.state_dict() if self.phase == "text" else None,
            "denoiser_modules": self.denoiser_modules if self.phase == "denoiser" else None,
            "optimizer": self.optimizer.state_dict(),
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
        }

    def restore(self, state: dict) -> None:
        self.vae.load_state_dict(state["vae"])
        for name, m in self.modules.items():
            m.load_state_dict(state["modules"][name])
            self.ema[name].load_state_dict(state["ema"][name])
        if state["phase"] != "vae":
            self.vae.register_to_config(**{k: state["vae_config"][k] for k in ("scaling_factor", "shift_factor")})
            self.leave_vae(measured=True)
            if state["phase"] == "text":
                self.prepare_text()
                self.heads.load_state_dict(state["heads"])
            else:
                self.prepare_denoiser(state.get("denoiser_modules"))
        self.optimizer.load_state_dict(state["optimizer"])
        self.phase, self.step = state["phase"], state["step"]
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])

    def prepare_denoiser(self, trained: list[str] | None = None) -> None:
        """The denoiser phase's optimizer over `trained` (a resumed run's saved list; by default all modules
        but a text encoder the text phase trained)."""
        from diffusers import DDPMScheduler

        # A text encoder trained contrastively stays frozen while the denoiser learns, as SD's CLIP does: the
        # denoiser's loss barely rewards telling a square from a circle, and weight decay would let them merge.
        if trained is None:
            frozen = {"text_encoder"} if self.plan["text_steps"] > 0 else set()
            trained = [name for name in self.modules if name not in frozen]
        self.denoiser_modules = list(trained)
        frozen = set(self.modules) - set(trained)
        for name in frozen:
            self.modules[name].requires_grad_(False)
        self.trained_params = [p for name in self.denoiser_modules for p in self.modules[name].parameters()]
        self.optimizer = torch.optim.AdamW(self.trained_params, lr=self.plan["lr"], weight_decay=0.01)
        self.noise_schedule = DDPMScheduler.from_config(self.scheduler_config()) if self.family == "sd" else None
        self.v_prediction = self.scheduler_config().get("prediction_type") == "v_prediction"

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / "train_state.pt.tmp"
        torch.save(self.state(), tmp)
        os.replace(tmp, self.out / "train_state.pt")
        export(self, self.out)


def export(trainer: Trainer, out: Path) -> None:
    """Write the pipeline (EMA weights) in diffusers layout into `out`, replacing what an earlier save wrote."""
    import diffusers
    from diffusers import FluxPipeline, StableDiffusionPipeline

    scheduler_cls = getattr(diffusers, trainer.cfg["scheduler"]["class_name"])
    parts = {**trainer.ema, "vae": trainer.vae, "tokenizer": trainer.tokenizer}
    parts["scheduler"] = scheduler_cls.from_config(trainer.scheduler_config())
    if trainer.family == "sd":
        pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)  # fmt: skip
    else:
        pipe = FluxPipeline(**parts, tokenizer_2=trainer.tokenizer_2)
    staging = out / "pipeline.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging, safe_serialization=True)
    for entry in staging.iterdir():
        target = out / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)
    staging.rmdir()


def stop_point(text: str) -> tuple[str, int]:
    """--stop-at's value: "STEP" (the denoiser phase's) or "PHASE:STEP"."""
    phase, _, step = text.rpartition(":")
    phase = phase or "denoiser"
    if phase not in PHASES or not step.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not STEP or PHASE:STEP with PHASE one of {', '.join(PHASES)}")
    return phase, int(step)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=sorted(MODELS), required=True)
    parser.add_argument("--out", type=Path, required=True, help="training state and the exported pipeline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="denoiser steps (default: the family's plan)")
    parser.add_argument("--vae-steps", type=int, help="VAE steps (default: the family's plan)")
    parser.add_argument("--text-steps", type=int, help="contrastive text-encoder steps (default: the family's plan)")
    parser.add_argument("--batch", type=int, help="denoiser batch size (default: the family's plan)")
    parser.add_argument("--lr", type=float, help="denoiser peak learning rate (default: the family's plan)")
    parser.add_argument("--vae-lr", type=float, help="VAE peak learning rate (default: the family's plan)")
    parser.add_argument("--vae-batch", type=int, help="VAE batch size (default: the family's plan)")
    parser.add_argument("--vae-crop", type=int, help="side of the VAE's training crops (64: whole images)")
    parser.add_argument("--latent-cache", type=int, help=f"scenes encoded for the denoiser (default {LATENT_CACHE})")
    parser.add_argument("--shape-sets", type=int, help=f"scene sets for the text phase (default {SHAPE_SETS})")
    parser.add_argument("--save-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--fresh", action="store_true", help="ignore OUT/train_state.pt and start over")
    parser.add_argument("--vae-from", type=Path, help="skip the VAE phase: take the VAE of this exported pipeline")
    parser.add_argument("--stop-at", type=stop_point, help="stop once the denoiser (or PHASE:STEP, e.g. "
                        "text:200) reaches this step, as an interruption would (the state is saved; a rerun "
                        "resumes)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    plan = dict(PLANS[args.family])
    for key in (
        "steps",
        "vae_steps",
        "text_steps",
        "batch",
        "lr",
        "vae_lr",
        "vae_batch",
        "vae_crop",
        "latent_cache",
        "shape_sets",
    ):
        if getattr(args, key) is not None:
            plan[key] = getattr(args, key)
    trainer = Trainer(args.family, args.out, args.seed, plan)
    state_path = args.out / "train_state.pt"
    if state_path.is_file() and not args.fresh:
        trainer.restore(torch.load(state_path, weights_only=False))
        print(f"resumed from {state_path}: phase {trainer.phase}, step {trainer.step}", flush=True)
    elif args.vae_from:
        trainer.reuse_vae(args.vae_from)
        print(f"VAE from {args.vae_from}; training the text encoder and the denoiser", flush=True)
    order = list(PHASES)
    if args.stop_at and (order.index(args.stop_at[0]), args.stop_at[1]) < (order.index(trainer.phase), trainer.step):
        parser.error(f"--stop-at {args.stop_at[0]}:{args.stop_at[1]} lies before where this run resumes "
                     f"({trainer.phase}:{trainer.step})")  # fmt: skip
    start = time.perf_counter()
    step_fns = {"vae": trainer.vae_step, "text": trainer.text_step, "denoiser": trainer.denoiser_step}
    for phase, step_fn in step_fns.items():
        if order.index(phase) < order.index(trainer.phase):
            continue  # done before a resume
        if phase != trainer.phase:
            trainer.enter(phase)
        total = plan[PHASES[phase][0]]
        bar = tqdm(total=total, initial=trainer.step, desc=f"{args.family} {phase}", mininterval=5, smoothing=0.05)
        losses: list[float] = []
        stop = args.stop_at[1] if args.stop_at and args.stop_at[0] == phase else total
        while trainer.step < min(total, stop):
            losses.append(step_fn())
            trainer.step += 1
            bar.update(1)
            if trainer.step % 50 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            if trainer.step % args.save_every == 0 or trainer.step in (total, stop):
                trainer.save()
        bar.close()
        if trainer.step < total or (args.stop_at and args.stop_at[0] == phase and trainer.step >= stop):
            trainer.save()
            print(f"stopped at {phase} step {trainer.step} of {total}; rerun to resume", flush=True)
            return
    trainer.save()
    print(f"wrote {args.out} ({time.perf_counter() - start:.0f} s this run)", flush=True)


if __name__ == "__main__":
    main()
