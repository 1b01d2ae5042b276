"""qkv_fusion: one projection for Q, K and V (K and V in cross-attention) in every attention module.

Requires: a module with separate to_q / to_k / to_v Linear projections (UNet and VAE attention, SD3
joint attention, Flux double- and single-stream attention), and add_q_proj / add_k_proj / add_v_proj
for the text stream of joint attention. Changes: their weights are concatenated, exactly, into one
Linear per group; the originals are replaced by stand-ins returning slices of the fused product, so
attention processors are unchanged. Undoing the pass (and `unfuse`, for LoRA-style edits) splits the
fused weights back bit for bit; the originals are not kept alive meanwhile (no doubled memory).

Measured on a 2-core CPU (docs/benchmarks.md): it does not pay there. Full SD 1.5 UNet at 128x128,
speed vs the stock pipeline in the same job: Paddle 0.964 (0.997 without the pass), PyTorch 0.969
(0.983 without), and 3% more peak memory while fusing; tiny families 0.98x-1.01x per step. It is in
no engine's default list; where kernel launches dominate (small GPU workloads) one GEMM instead of
three may pay, which was not measured here.
"""

from __future__ import annotations

from typing import Any

from runner.pass_base import Pass, PassContext

SELF_GROUPS = (("to_q", "to_k", "to_v"), ("add_q_proj", "add_k_proj", "add_v_proj"))
CROSS_GROUPS = (("to_k", "to_v"),)  # queries read the image, keys/values the text
PREFIX = "fused_"


def _attention_modules(component: Any, is_linear: Any) -> list[Any]:
    modules = component.modules() if hasattr(component, "modules") else component.sublayers(include_self=True)
    return [m for m in modules if all(is_linear(getattr(m, name, None)) for name in ("to_q", "to_k", "to_v"))]


def _groups(module: Any, fusion: Any) -> tuple[tuple[str, ...], ...]:
    """Self-attention fuses Q, K, V (and the text stream's); cross-attention only K, V, whose input is
    the text. Cross-attention is recognized by the flag diffusers sets or by Q reading a different width."""
    widths = {fusion.in_features(getattr(module, name)) for name in ("to_q", "to_k", "to_v")}
    return CROSS_GROUPS if getattr(module, "is_cross_attention", False) or len(widths) > 1 else SELF_GROUPS


class QKVFusion(Pass):
    name = "qkv_fusion"
    engines = ("paddle", "torch")
    requires = "attention modules with separate to_q/to_k/to_v Linear projections"
    changes = "Q, K, V (K, V for cross-attention) computed by one concatenated Linear per attention module"
    before = ("rope_cache",)
    defaults = ()

    def check(self, component: Any, ctx: PassContext) -> str | None:
        if not _attention_modules(component, ctx.engine.fusion.is_linear):
            return "no attention module with separate to_q/to_k/to_v projections"
        return None

    def apply(self, component: Any, ctx: PassContext) -> dict[str, Any]:
        fusion = ctx.engine.fusion
        modules = groups = 0
        for module in _attention_modules(component, fusion.is_linear):
            modules += 1
            for names in _groups(module, fusion):
                linears = [getattr(module, name, None) for name in names]
                if not all(fusion.is_linear(layer) for layer in linears):
                    continue
                holder, parts = fusion.fuse(linears)
                setattr(module, PREFIX + "_".join(names), holder)
                for name, part in zip(names, parts):
                    setattr(module, name, part)
                ctx.changes.on_undo(lambda m=module, n=names: _unfuse_group(m, n, fusion))
                groups += 1
        return {"attention_modules": modules, "fused_groups": groups}


def _unfuse_group(module: Any, names: tuple[str, ...], fusion: Any) -> bool:
    """Put back the Linear layers of one fused group of `module` (exact weights); False if not fused."""
    attr = PREFIX + "_".join(names)
    holder = getattr(module, attr, None)
    if holder is None:
        return False
    for name, layer in zip(names, fusion.split(holder)):
        setattr(module, name, layer)
    delattr(module, attr)
    return True


def unfuse(component: Any, engine: Any) -> int:
    """Split every fused projection of `component` back into its original Linear layers; return how many."""
    modules = component.modules() if hasattr(component, "modules") else component.sublayers(include_self=True)
    return sum(
        _unfuse_group(module, names, engine.fusion) for module in list(modules) for names in SELF_GROUPS + CROSS_GROUPS
    )
