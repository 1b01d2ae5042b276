"""groupnorm_silu: each GroupNorm whose output goes straight into a SiLU computes both in one kernel (PyTorch).

Requires: 2-D convolution blocks where a GroupNorm feeds a SiLU: ResNet blocks (`norm1` -> `nonlinearity`,
`norm2` -> `nonlinearity`; UNets and VAEs, their mid-blocks and up/down blocks) and the output norms of
UNets and VAE encoders/decoders (`conv_norm_out` -> `conv_act`). Changes: such a GroupNorm is replaced by a
module sharing its parameters that computes GroupNorm+SiLU fused (components/torch/groupnorm_silu.py: a
Triton kernel on CUDA, its reference implementation in torch operations elsewhere, so CPU runs verify the
same algorithm; a module, not a hook on the norm's call: backend=inductor bypasses submodule hooks while its
compiled code runs), and the block's activation attribute by a stand-in that passes 4-D tensors through
(they are the fused norms' outputs, already activated) and applies the original activation to anything else.
That rule is what lets the fused norm stay out of the block's forward: a ResNet block's one `nonlinearity`
module also activates the 2-D time embedding, which must still see the SiLU.

Blocks where something sits between the norm and the activation are skipped with the reason (a `scale_shift`
time embedding scales and shifts norm2's output first; conditional norms, AdaGroupNorm and SpatialNorm, take
a second input); so are other activations and 3-D convolution blocks. The block's forward is diffusers' own
(the same structure in diffusers 0.31 and 0.42), and removing the pass puts the original norm and activation
modules back, so outputs return bit for bit. Fused in fp32 with one rounding, results differ from the
unfused pair by rounding only (within the precision's verification tolerance). Not in any `default` list: on
CPU the reference is slower than PyTorch's own GroupNorm and SiLU (docs/benchmarks.md); the GPU figures of
the Triton kernel decide.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from dataclasses import dataclass
from typing import Any

from runner.pass_base import Pass, PassContext

TRITON_MISSING = "groupnorm_silu needs the 'triton' package for its CUDA kernel: pip install triton"
FUSED_RANK = 4  # the norms fused here normalize [N, C, H, W] activations of 2-D convolution blocks


@dataclass(frozen=True)
class Pattern:
    """Where a block's GroupNorms feed its activation: the attribute names, and the block's convolution
    (which tells a 2-D block from a 3-D one)."""

    norms: tuple[str, ...]
    activation: str
    conv: str


PATTERNS = (
    Pattern(norms=("norm1", "norm2"), activation="nonlinearity", conv="conv1"),  # ResNet blocks
    Pattern(norms=("conv_norm_out",), activation="conv_act", conv="conv_out"),  # UNet, VAE encoder/decoder
)


def _unsupported(module: Any, pattern: Pattern) -> str | None:
    """Why this block's norms cannot be fused (None: they can)."""
    import torch

    kind = type(module).__name__
    activation = getattr(module, pattern.activation)
    if type(activation) is not torch.nn.SiLU:
        return f"{kind}: activation {type(activation).__name__}, not SiLU"
    for name in pattern.norms:
        norm = getattr(module, name)
        if type(norm) is not torch.nn.GroupNorm:  # a subclass may compute differently; a conditional norm
            return f"{kind}: {name} is {type(norm).__name__}, not GroupNorm"  # takes a second input
    if not isinstance(getattr(module, pattern.conv, None), torch.nn.Conv2d):
        return f"{kind}: not a 2-D convolution block"
    if getattr(module, "time_embedding_norm", "default") == "scale_shift":
        return f"{kind}: time_embedding_norm=scale_shift scales and shifts norm2's output before the activation"
    return None


def _blocks(component: Any) -> tuple[list[tuple[Any, Pattern]], Counter]:
    """The (block, pattern) pairs to fuse, and how many blocks were left out for each reason."""
    fusable, skipped = [], Counter()
    for module in component.modules():
        for pattern in PATTERNS:
            if not all(hasattr(module, name) for name in (*pattern.norms, pattern.activation)):
                continue
            if any(getattr(module, name) is None for name in (*pattern.norms, pattern.activation)):
                continue  # the layer is configured away (a UNet without an output norm)
            reason = _unsupported(module, pattern)
            if reason:
                skipped[reason] += 1
            else:
                fusable.append((module, pattern))
    return fusable, skipped


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None  # finds it without importing it


def _on_cuda(component: Any, ctx: PassContext) -> bool:
    if str(getattr(ctx.engine, "device", "")).startswith("cuda"):
        return True
    return any(p.is_cuda for p in component.parameters())


class GroupNormSiLU(Pass):
    name = "groupnorm_silu"
    engines = ("torch",)
    requires = "GroupNorm feeding SiLU in 2-D convolution blocks (ResNet blocks, UNet/VAE output norms)"
    changes = "GroupNorm+SiLU fused into one kernel (Triton on CUDA, its reference elsewhere); removable"
    defaults = ()  # slower on CPU (the reference); the GPU figures of the Triton kernel decide
    eager_only = True  # a converted graph (OpenVINO, ONNX Runtime) fuses with its own kernels

    @classmethod
    def check_device(cls, device: str) -> str | None:
        return TRITON_MISSING if device.startswith("cuda") and not triton_available() else None

    def check(self, component: Any, ctx: PassContext) -> str | None:
        fusable, skipped = _blocks(component)
        if fusable:
            return None
        if skipped:
            return "no supported block: " + "; ".join(f"{n} x {reason}" for reason, n in sorted(skipped.items()))
        return "no GroupNorm feeding a SiLU"

    def apply(self, component: Any, ctx: PassContext) -> dict[str, Any]:
        from components.torch.groupnorm_silu import ActivationAfterFusedNorms, FusedGroupNormSiLU

        if _on_cuda(component, ctx) and not triton_available():
            raise RuntimeError(TRITON_MISSING)
        fusable, skipped = _blocks(component)
        norms = Counter()
        for module, pattern in fusable:
            for name in pattern.norms:
                ctx.changes.set_attribute(module, name, FusedGroupNormSiLU(getattr(module, name)))
            activation = ActivationAfterFusedNorms(getattr(module, pattern.activation), FUSED_RANK)
            ctx.changes.set_attribute(module, pattern.activation, activation)
            norms[type(module).__name__] += len(pattern.norms)
        return {"fused_norms": dict(norms), "skipped_blocks": dict(skipped)}
