"""Train a shapes model from scratch on the CPU and write it in diffusers layout.

    python scripts/train_shapes.py --family sd --out /tmp/shapes_sd      # about 50 min on 2 cores
    python scripts/train_shapes.py --family flux --out /tmp/shapes_flux
    python -m runner model=shapes_sd15 model.weights=/tmp/shapes_sd prompt="a green square on a white background"

The architecture is the model config's (conf/model/shapes_sd15.yaml, shapes_flux.yaml); images and captions
are drawn on the fly from runner/shapes.py. Two phases: the VAE learns to reconstruct the images (its latent
scale, and for Flux its shift, are then measured and written into its config), then the denoiser and the text
encoder(s) learn together on the frozen VAE's latents: noise prediction with 10% empty captions for SD
(classifier-free guidance), flow matching for Flux. An exponential moving average of the weights is shipped.

Deterministic for a given --seed and thread count. Every --save-every steps the full training state goes to
OUT/train_state.pt (atomically) and the pipeline is exported to OUT/; a run that finds OUT/train_state.pt
resumes from it (--fresh starts over).
"""

from __future__ import annotations

import argparse
import copy
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
from runner.shapes import PHRASINGS, Scene, caption, random_scene, render  # noqa: E402

LATENT_CACHE = 8192  # scenes encoded once for the denoiser phase: encoding every batch took a fifth of a step
MODELS = {"sd": "shapes_sd15", "flux": "shapes_flux"}
# Per family: VAE steps, denoiser steps, batch sizes, learning rates. Sized for under an hour on 2 cores.
COMMON = {"latent_cache": LATENT_CACHE, "vae_batch": 16, "vae_crop": 32, "vae_lr": 3e-3, "batch": 32, "lr": 1e-3}
PLANS = {"sd": {**COMMON, "vae_steps": 2500, "steps": 4000}, "flux": {**COMMON, "vae_steps": 2000, "steps": 2500}}
# SD timesteps: this share of each batch is drawn from [low, high) instead of the whole range. There (SNR ~9 down
# to ~0.09 on the linear schedule) the outline of the shape is decided; above it the 8x8 latent is nearly pure
# noise and only the colours matter, which the model learns within a few hundred steps anyway.
T_FOCUS = {"share": 0.5, "low": 100, "high": 500}
CAPTION_DROP = {"sd": 0.1, "flux": 0.0}  # empty captions teach the unconditional branch that CFG needs
KL_WEIGHT = 1e-6  # small: a larger weight keeps the posterior noisy, and the decoder learns to blur
EMA_DECAY = 0.999
SIDE = 64


def model_config(name: str) -> dict:
    with open(ROOT / "conf" / "model" / f"{name}.yaml", encoding="utf-8") as f:
        return yaml.safe_load(f)


def draw_scenes(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, list[Scene]]:
    """n random scenes, rendered as a (n, 3, 64, 64) tensor in [-1, 1]."""
    scenes = [random_scene(rng) for _ in range(n)]
    images = np.stack([render(scene, SIDE, rng) for scene in scenes])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1, scenes


def captions(rng: np.random.Generator, scenes: list[Scene], drop: float) -> list[str]:
    """A caption of each scene in a random phrasing, or "" with probability `drop`."""
    texts = [caption(scene, int(rng.integers(PHRASINGS))) for scene in scenes]
    return ["" if rng.random() < drop else text for text in texts]


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

    # ---- phase 2: denoiser + text encoders ----------------------------------------------------------------
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
        cfg = self.vae.config
        x0 = (sample - (getattr(cfg, "shift_factor", None) or 0.0)) * cfg.scaling_factor
        return x0, captions(self.rng, [self.cache_scenes[i] for i in idx], drop)

    def timesteps(self, n: int) -> torch.Tensor:
        """n training timesteps: T_FOCUS["share"] of them from the focus range, the rest from the whole range."""
        whole = torch.randint(0, self.noise_schedule.config.num_train_timesteps, (n,))
        focus = torch.randint(T_FOCUS["low"], T_FOCUS["high"], (n,))
        return torch.where(torch.rand(n) < T_FOCUS["share"], focus, whole)

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
        loss_value = self.update(loss, [p for mod in m.values() for p in mod.parameters()])
        decay = min(EMA_DECAY, (1 + self.step) / (10 + self.step))  # warm-up: forget the random init
        with torch.no_grad():
            for name, mod in m.items():
                for e, p in zip(self.ema[name].parameters(), mod.parameters()):
                    e.lerp_(p, 1 - decay)
        return loss_value

    def reuse_vae(self, pipeline_dir: Path) -> None:
        from diffusers import AutoencoderKL

        self.vae = AutoencoderKL.from_pretrained(pipeline_dir / "vae")
        self.prepare_denoiser()
        self.phase, self.step = "denoiser", 0

    def start_denoiser(self) -> None:
        self.measure_latents()
        self.prepare_denoiser()
        self.phase, self.step = "denoiser", 0

    def scheduler_config(self) -> dict:
        return dict(self.cfg["scheduler"]["config"])

    # ---- shared ---------------------------------------------------------------------------------------
    def update(self, loss: torch.Tensor, params) -> float:
        total = self.plan["vae_steps" if self.phase == "vae" else "steps"]
        lr = self.plan["vae_lr" if self.phase == "vae" else "lr"]
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
            "optimizer": self.optimizer.state_dict(),
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
        }

    def restore(self, state: dict) -> None:
        self.vae.load_state_dict(state["vae"])
        for name, m in self.modules.items():
            m.load_state_dict(state["modules"][name])
            self.ema[name].load_state_dict(state["ema"][name])
        if state["phase"] == "denoiser":
            self.vae.register_to_config(**{k: state["vae_config"][k] for k in ("scaling_factor", "shift_factor")})
            self.prepare_denoiser()
        self.optimizer.load_state_dict(state["optimizer"])
        self.phase, self.step = state["phase"], state["step"]
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])

    def prepare_denoiser(self) -> None:
        from diffusers import DDPMScheduler

        self.vae.requires_grad_(False).eval()
        params = [p for mod in self.modules.values() for p in mod.parameters()]
        self.optimizer = torch.optim.AdamW(params, lr=self.plan["lr"], weight_decay=0.01)
        self.noise_schedule = DDPMScheduler.from_config(self.scheduler_config()) if self.family == "sd" else None
        self.v_prediction = self.scheduler_config().get("prediction_type") == "v_prediction"
        self.encode_cache()

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=sorted(MODELS), required=True)
    parser.add_argument("--out", type=Path, required=True, help="training state and the exported pipeline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="denoiser steps (default: the family's plan)")
    parser.add_argument("--vae-steps", type=int, help="VAE steps (default: the family's plan)")
    parser.add_argument("--batch", type=int, help="denoiser batch size (default: the family's plan)")
    parser.add_argument("--lr", type=float, help="denoiser peak learning rate (default: the family's plan)")
    parser.add_argument("--vae-lr", type=float, help="VAE peak learning rate (default: the family's plan)")
    parser.add_argument("--vae-batch", type=int, help="VAE batch size (default: the family's plan)")
    parser.add_argument("--vae-crop", type=int, help="side of the VAE's training crops (64: whole images)")
    parser.add_argument("--latent-cache", type=int, help=f"scenes encoded for the denoiser (default {LATENT_CACHE})")
    parser.add_argument("--save-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--fresh", action="store_true", help="ignore OUT/train_state.pt and start over")
    parser.add_argument("--vae-from", type=Path, help="skip the VAE phase: take the VAE of this exported pipeline")
    parser.add_argument("--stop-at", type=int, help="stop once the denoiser reaches this step, as an interruption "
                        "would (the state is saved; a rerun resumes)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    plan = dict(PLANS[args.family])
    for key in ("steps", "vae_steps", "batch", "lr", "vae_lr", "vae_batch", "vae_crop", "latent_cache"):
        if getattr(args, key) is not None:
            plan[key] = getattr(args, key)
    trainer = Trainer(args.family, args.out, args.seed, plan)
    state_path = args.out / "train_state.pt"
    if state_path.is_file() and not args.fresh:
        trainer.restore(torch.load(state_path, weights_only=False))
        print(f"resumed from {state_path}: phase {trainer.phase}, step {trainer.step}", flush=True)
    elif args.vae_from:
        trainer.reuse_vae(args.vae_from)
        print(f"VAE from {args.vae_from}; training the denoiser", flush=True)
    start = time.perf_counter()
    for phase, total, step_fn in (("vae", plan["vae_steps"], trainer.vae_step),
                                  ("denoiser", plan["steps"], trainer.denoiser_step)):  # fmt: skip
        if phase == "vae" and trainer.phase != "vae":
            continue
        if phase == "denoiser" and trainer.phase == "vae":
            trainer.start_denoiser()
        bar = tqdm(total=total, initial=trainer.step, desc=f"{args.family} {phase}", mininterval=5, smoothing=0.05)
        losses: list[float] = []
        stop = args.stop_at if phase == "denoiser" and args.stop_at is not None else total
        while trainer.step < min(total, stop):
            losses.append(step_fn())
            trainer.step += 1
            bar.update(1)
            if trainer.step % 50 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            if trainer.step % args.save_every == 0 or trainer.step in (total, stop):
                trainer.save()
        bar.close()
        if trainer.step < total:
            print(f"stopped at {phase} step {trainer.step} of {total}; rerun to resume", flush=True)
            return
    trainer.save()
    print(f"wrote {args.out} ({time.perf_counter() - start:.0f} s this run)", flush=True)


if __name__ == "__main__":
    main()
