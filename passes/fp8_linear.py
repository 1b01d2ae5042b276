"""fp8_linear: the transformer blocks' Linear layers as fp8 e4m3 GEMMs (PyTorch; lossy).

Requires: a component with `transformer_blocks` or `single_transformer_blocks` holding nn.Linear layers: the
SD3 and Flux transformers (their double- and single-stream blocks) and the UNets (the BasicTransformerBlocks
in their attentions: attn1, attn2, ff). Text encoders and VAEs have no such blocks and are left alone.
Changes: each such Linear whose in- and out-features are multiples of 16 (the CUDA fp8 GEMM's rule, applied
on every device so that a CPU run replaces what a GPU run does) becomes an Fp8Linear (components/torch/fp8.py):
weights quantized once per output row, activations per row at every call, torch._scaled_mm. The layers that
do not qualify are counted in the report. The blocks' norm modulation Linears (AdaLayerNorm's `linear`, in
`norm*` submodules: shift / scale / gate from the time embedding) stay unquantized unless `modulation=true`:
their output scales every token of the block, so an error there is systematic rather than per token, and
with one input row per image they are bandwidth-bound, where fp8 tensor cores gain nothing.

Hardware: fp8 matrix units (CUDA compute capability 8.9 and newer); refused on older GPUs before any weights
load (`check_device`, at plan time). The CPU runs torch._scaled_mm's reference kernel, slowly: it is there
to check the pass, not to speed anything up.

Lossy, so never in `all` or a `default` list. What it costs is reported, three ways: the apply details hold
each component's relative weight error (Frobenius norm of W - dequant(W) over that of W, all replaced
layers); `stats()` the relative error of each replaced layer's first output against the unquantized layer on
the same input (mean and worst; option `measure`); and `verify=true` compares the component's first output
with the unquantized copy under this pass's own `tolerance` (relative to the output's peak) instead of the
precision's, which fp8 cannot meet. Removing the pass puts the original Linear layers back with their
weights, bit for bit; meanwhile those weights wait on the host, not on the accelerator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runner.errors import CapabilityError
from runner.pass_base import Pass, PassContext, PassOptions

BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")


@dataclass(frozen=True)
class Fp8LinearOptions(PassOptions):
    # Also quantize the blocks' norm modulation Linears (AdaLayerNorm shift / scale / gate). shapes_flux, 24 prompts
    # against the unquantized fp32 run: 42.6 dB mean / 29.2 dB worst without them, 40.4 / 20.6 dB with them and
    # lower prompt adherence (colour 0.54 instead of 0.58).
    modulation: bool = False
    # Measure each replaced layer's first output against the unquantized layer (one extra GEMM per layer, once;
    # on a GPU its original weight is copied back from the host for it).
    measure: bool = True


def _block_linears(component: Any, modulation: bool) -> tuple[list[tuple[str, Any]], list[str]]:
    """(name, Linear) for every Linear inside a transformer block list, and the names of the modulation ones
    left out (empty with modulation=True)."""
    from torch import nn

    chosen, modulating = [], []
    for name, module in component.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        parts = name.split(".")
        lists = [i for i, part in enumerate(parts) if part in BLOCK_LISTS]
        if not lists:
            continue
        # parts after "<list>.<index>": the path inside the block
        if any(part.startswith("norm") for part in parts[lists[-1] + 2 : -1]) and not modulation:
            modulating.append(name)
        else:
            chosen.append((name, module))
    return chosen, modulating


class Fp8LinearPass(Pass):
    name = "fp8_linear"
    engines = ("torch",)  # Paddle's CPU build has no fp8 matrix product
    requires = "Linear layers in transformer_blocks / single_transformer_blocks (SD3, Flux, UNet attention)"
    changes = "those Linears (K, N multiples of 16) as fp8 e4m3 GEMMs, per-row scales; lossy, error reported"
    after = ("qkv_fusion",)  # quantize the fused Q/K/V projection: one fp8 GEMM instead of three
    defaults = ()  # lossy: never in a default list
    eager_only = True  # a converted graph (OpenVINO, ONNX Runtime) has no fp8 GEMM to export to
    # verify's bound on the first denoiser call, max |error| relative to the output's peak. Measured on the CPU:
    # 0.003-0.016 on the random-weight tiny models, 0.012 on shapes_sd15, 0.088 on shapes_flux (the error adds
    # up over its 6 blocks); a wrong scale moves the output by the order of its peak.
    tolerance = 0.25
    options_schema = Fp8LinearOptions

    def __init__(self, options: Fp8LinearOptions | None = None) -> None:
        super().__init__(options)
        self.layers: list[tuple[str, Any]] = []  # (qualified name, Fp8Linear) of every replacement

    @classmethod
    def check_device(cls, device: str) -> str | None:
        from components.torch.fp8 import fp8_refusal

        return fp8_refusal(device)

    def check(self, component: Any, ctx: PassContext) -> str | None:
        if not hasattr(component, "named_modules"):
            return "not a PyTorch module"
        from components.torch.fp8 import qualifies

        chosen, _ = _block_linears(component, self.options.modulation)
        if not chosen:
            return "no Linear layers in transformer_blocks / single_transformer_blocks"
        if not any(qualifies(linear) for _, linear in chosen):
            return "no Linear in its transformer blocks has in- and out-features that are multiples of 16"
        return None

    def apply(self, component: Any, ctx: PassContext) -> dict[str, Any]:
        from components.torch.fp8 import qualifies, quantize_layer

        chosen, modulating = _block_linears(component, self.options.modulation)
        device = next(component.parameters()).device
        refusal = self.check_device(str(device))
        if refusal:  # the plan checks this before loading; a pipeline built without that check lands here
            raise CapabilityError(refusal)
        replaced, misshapen, error_sq, norm_sq = 0, [], 0.0, 0.0
        for name, linear in chosen:
            if not qualifies(linear):
                misshapen.append(name)
                continue
            parent_name, _, attribute = name.rpartition(".")
            fp8, restore = quantize_layer(linear, self.options.measure)
            ctx.changes.set_attribute(component.get_submodule(parent_name), attribute, fp8)
            ctx.changes.on_undo(restore)
            self.layers.append((f"{type(component).__name__}.{name}", fp8))
            replaced += 1
            error_sq, norm_sq = error_sq + fp8.weight_error_sq, norm_sq + fp8.weight_norm_sq
        return {
            "linears": replaced,
            "weight_relative_error": round((error_sq / norm_sq) ** 0.5, 5) if norm_sq else 0.0,
            "left_alone_shape": len(misshapen),  # in- or out-features not a multiple of 16
            "left_alone_modulation": len(modulating),
            **({"left_alone": misshapen} if misshapen else {}),
        }

    def stats(self) -> dict[str, Any]:
        measured = [(name, float(layer.first_call_error)) for name, layer in self.layers
                    if layer.first_call_error is not None]  # fmt: skip
        if not measured:
            return {}
        worst = max(measured, key=lambda item: item[1])
        return {
            "measured_layers": len(measured),
            "first_call_relative_error_mean": round(sum(e for _, e in measured) / len(measured), 5),
            "first_call_relative_error_max": round(worst[1], 5),
            "worst_layer": worst[0],
        }
