"""Fast CPU inference: one switch that picks its mechanisms for the CPU it runs on.

    pipe = sfumato.KandinskyV22Pipeline.from_pretrained(...)
    sfumato.optimize(pipe)          # or pipe.enable_fast_cpu()
    image = pipe(...).images[0]
    sfumato.fast.disable(pipe)      # back to the exact parity mode

The default (parity) mode computes what the reference computes, to ~1e-6. The
fast mode trades that for speed, where the CPU makes a trade worth it:

* bf16 weights and activations only where the CPU has native bf16 (AMX or
  AVX-512 BF16). Without it PyTorch falls back to slow emulated kernels (on an
  AVX2 Zen 3 one full-size UNet step did not finish in 250 s, against ~20 s in
  fp32), so bf16 is never chosen there;
* channels_last for every convolutional model, from the first layer on (inputs
  and weights): oneDNN's NHWC convolutions beat its NCHW ones on the CPUs
  measured (up to 1.6x on the MoVQ's 512 x 512 maps on Zen 3). The parity mode
  turns channels-last only where the reference does (after the first
  attention), to keep its rounding;
* attention through ``F.scaled_dot_product_attention`` (its fused flash kernel
  on CPU): already sfumato's default processor, so the plan only records it.
  Without AMX that kernel has no bf16 fast path (it runs as fast in bf16 as in
  fp32), so where the plan is bf16 there, attention runs as two bf16 matrix
  products and a softmax instead (``sfumato.nn.attention.products_attention``;
  on a 2-core Zen 5, 2x per call at a UNet's 32x32 maps, 3.6x at the MoVQ's
  64x64), with the scores rounded to bf16 before the softmax;
* where the plan is fp32, the large 3x3 convolutions by Winograd F(4x4, 3x3)
  on large maps and by one GEMM on the smallest (``sfumato.nn.fast_conv``):
  without bf16 hardware, oneDNN's fp32 convolutions already run at 80-95% of
  the FMA peak on large maps, so doing 4x fewer multiplications is what is left
  (1.15-2.3x per convolution on Zen 3; the rounding of a plain fp32
  convolution, ~1e-5 of the largest output), and on 8x8 maps they reach half
  of it, where a GEMM does 1.8-2x better. bf16 plans keep oneDNN's
  convolutions: AMX runs them fast, and bf16 would amplify the transforms' rounding;
* on AMD CPUs, the fp32 linear layers (the prior's and the text and image
  encoders', and all of them in fp32 plans) through oneDNN's product
  (``sfumato.nn.onednn_linear``): PyTorch's fp32 ``F.linear`` is MKL's sgemm,
  which runs no AVX-512 kernels on AMD; 1.2-1.7x at the prior's and encoders'
  shapes on Zen 4, a full-size prior step 2.42-2.44 -> 1.69-1.75 s;
* where the CPU has fast int8 dot products (AVX-512 VNNI; measured on Zen 4,
  which also has AVX-512 BF16), the convolutions in int8 (``sfumato.nn.int8_conv``):
  oneDNN's int8 convolutions run at 1.9x its bf16 ones there. Inputs are
  quantized at every call over each picture's own range (nothing calibrated;
  ``sfumato.nn.batching``: a picture does not depend on its batch); a call whose
  range is stretched by outliers runs in bf16 instead;
* freed memory kept in the process (``sfumato.allocator``, glibc; the
  generation body does it for every picture, in the parity mode too): large
  activations otherwise come back from the OS page by page at every call;
* ``torch.compile`` only on the CPUs where it was measured to pay (AMX:
  ~1.5x per UNet step after ~60-90 s of compilation, cached on disk by
  inductor's FX-graph cache); off elsewhere, because it costs start-up;
* the converted weights (cast to bf16, laid out channels-last, quantized to
  int8) made once per machine and kept on disk
  (``sfumato.checkpoint.derived.cached_tensors``, beside the values kept there):
  a later process maps them instead of converting, and the fp32 weights they
  came from are not used. For the full-size 2.2 UNet on the Zen 4, load +
  conversion + first step took 8.2 s instead of 16.6 s with the files in the
  page cache and 14.6-16.4 s instead of 26.3-27.2 s from a cold disk, and the
  process held 3.1 instead of 9.0 GiB; making and writing the 3.8 GB file
  costs 18-28 s once. The same pictures, bit for bit.

fp32 stays where precision matters: the models keep taking and returning fp32
tensors (and report ``dtype == float32``), so the scheduler's arithmetic, the
latents and the final decoded image are fp32; only the inside of a model's
forward / ``encode`` / ``decode`` runs in the plan's dtype.

``choose(capability, flags)`` is a pure function of what the CPU reports, so
the choice can be tested for any CPU without that CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from .allocator import keep_freed_memory

logger = logging.getLogger(__name__)

__all__ = ["Plan", "choose", "cpu_capability", "cpu_flags", "cpu_model", "cpu_vendor", "has_native_bf16", "optimize",
           "disable", "plan_for_part", "bf16_warning", "warn_if_slow_dtype", "plan_for_this_cpu", "current_plan"]

# /proc/cpuinfo flags that mean a native bf16 matrix or dot-product instruction
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# components the fast mode converts, when a pipeline has them
FAST_COMPONENTS = ("unet", "movq", "vae", "prior", "controlnet")
# components that run once per prompt or picture: they get the plan's oneDNN linear layers alone (no change of
# dtype or layout), and stay as they are in plans without them
ENCODER_COMPONENTS = ("text_encoder", "text_encoder_2", "image_encoder")
# methods that take and return tensors and run the model's weights
_ENTRY_POINTS = ("forward", "encode", "decode")


@dataclass(frozen=True)
class Plan:
    """What the fast mode does on one CPU, and why."""

    dtype: torch.dtype = torch.float32  # weights and activations inside the models
    channels_last: bool = True
    compile: bool = False
    sdpa: bool = True  # fused attention through F.scaled_dot_product_attention
    # bf16 attention as two bf16 matrix products and a softmax (sfumato.nn.attention.products_attention), where
    # SDPA's fused kernel has no bf16 fast path (AVX-512 BF16 without AMX); SDPA stays for masked calls
    products_attention: bool = False
    # large 3x3 convolutions by Winograd F(4x4, 3x3) or one GEMM (sfumato.nn.fast_conv), for fp32 plans
    fast_convolutions: bool = False
    # convolutions in int8 with inputs quantized per picture at every call (sfumato.nn.int8_conv), with VNNI
    int8_convolutions: bool = False
    # linear layers in int8 the same way (sfumato.nn.int8_linear)
    int8_linears: bool = False
    # fp32 linear layers through oneDNN's product instead of MKL's (sfumato.nn.onednn_linear), on AMD CPUs;
    # the text and image encoders get these alone
    onednn_linears: bool = False
    # freed memory kept in the process for reuse (sfumato.allocator; the generation body does it too):
    # a full-size model's large activations otherwise come back from the OS page by page, at every call
    keep_freed_memory: bool = True
    # components that keep fp32 weights (and no int8) whatever the plan says: the prior's image embedding
    # steers the whole picture, and bf16 there cost 4-15 dB of PSNR on the built-in model
    # (bf16 in the UNet and MoVQ alone kept it above 44 dB), for ~15% of a default picture's time. Only its
    # products in bf16 (fp32 residual stream, norms and outputs: 3x per full-size prior step on Zen 4) still
    # put the worst of 270 pictures at 24.5 dB, and 25-27 dB with the input or the weights split in two bf16
    # halves: below the 30 dB bar, so the prior stays fp32 throughout
    fp32_parts: tuple[str, ...] = ("prior",)
    reasons: tuple[str, ...] = field(default=(), compare=False)

    def describe(self) -> str:
        name = {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(self.dtype, str(self.dtype))
        parts = [name] + [label for on, label in ((self.channels_last, "channels_last"),
                                                  (self.sdpa and not self.products_attention, "SDPA attention"),
                                                  (self.products_attention, "attention as bf16 matrix products"),
                                                  (self.fast_convolutions, "Winograd/GEMM 3x3 convolutions"),
                                                  (self.int8_convolutions, "int8 convolutions"),
                                                  (self.int8_linears, "int8 linear layers"),
                                                  (self.onednn_linears, "fp32 linear layers through oneDNN"),
                                                  (self.compile, "torch.compile")) if on]
        return " + ".join(parts)


# --------------------------------------------------------------------------- what the CPU is


def cpu_capability() -> str:
    """The vector ISA PyTorch dispatches its CPU kernels to: "AVX2", "AVX512", "DEFAULT", ..."""
    try:
        return torch.backends.cpu.get_cpu_capability()
    except Exception:  # very old builds, exotic platforms
        return "DEFAULT"


def _cpuinfo(*keys: str) -> str | None:
    """The value of the first /proc/cpuinfo line that starts with one of ``keys`` (Linux), or None."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith(keys):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or PyTorch's own probes elsewhere."""
    listed = _cpuinfo("flags", "Features")
    if listed is not None:
        return frozenset(listed.split())
    flags = set()
    probes = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported",
              "avx512_vnni": "_is_avx512_vnni_supported", "avx512f": "_is_avx512_supported"}
    cpu = getattr(torch._C, "_cpu", None)
    for flag, probe in probes.items():
        try:
            if cpu is not None and getattr(cpu, probe)():
                flags.add(flag)
        except Exception:
            pass
    return frozenset(flags)


def cpu_vendor() -> str:
    """The CPU's vendor as /proc/cpuinfo gives it ("GenuineIntel", "AuthenticAMD", ...), or "" if unknown."""
    return _cpuinfo("vendor_id") or ""


def cpu_model() -> str:
    """The CPU's marketing name, as /proc/cpuinfo gives it (or the platform's processor string)."""
    name = _cpuinfo("model name")
    if name:
        return name
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def has_native_bf16(capability: str, flags: Iterable[str]) -> bool:
    """True when bf16 matrix products run on bf16 hardware (AMX, or AVX-512 BF16 dot products)."""
    flags = {flag.lower() for flag in flags}
    return any(flag in flags for flag in NATIVE_BF16_FLAGS) or capability.upper() in ("AMX", "AVX512_BF16")


def choose(capability: str, flags: Iterable[str], vendor: str = "") -> Plan:
    """The fast mode's plan for a CPU that reports ``capability`` (PyTorch's), ``flags`` and ``vendor``
    (/proc/cpuinfo's ``vendor_id``).

    A pure function: what it picks depends only on what the CPU reports, never on timing.
    """
    flags = frozenset(flag.lower() for flag in flags)
    # measured on AMD (Zen 4; and with AVX2 only, emulated there): MKL's fp32 sgemm, behind F.linear, trails
    # oneDNN's product by 1.2-1.7x; on Intel CPUs MKL runs its own fast kernels (not measured)
    onednn = vendor == "AuthenticAMD"
    onednn_reason = "fp32 linear layers through oneDNN (MKL's fp32 product runs no AVX-512 kernels on AMD: 1.2-1.7x)"
    if has_native_bf16(capability, flags):
        amx = "amx_bf16" in flags or capability.upper() == "AMX"
        reasons = ("native bf16 (" + ("AMX" if amx else "AVX-512 BF16") + "): bf16 weights and activations",
                   "channels_last: oneDNN's NHWC kernels are its fastest",
                   "SDPA's fused CPU attention" if amx else
                   "attention as bf16 matrix products and a softmax: SDPA's fused kernel has no bf16 fast path "
                   "without AMX (measured on Zen 5: 2-3.6x slower per call)",
                   "freed memory kept for reuse: no page faults on large activations")
        if amx:
            reasons += ("torch.compile: measured ~1.5x per UNet step on AMX, compiled once and cached",
                        "no int8 convolutions: not measured on AMX")
        # measured on AVX-512 BF16 + VNNI without AMX (Zen 4): oneDNN's int8 convolutions run at 1.9x its bf16
        int8 = not amx and "avx512_vnni" in flags
        if int8:
            reasons += ("int8 convolutions and linear layers (VNNI: 1.4-1.9x bf16's rate), inputs quantized per picture "
                        "at every call, bf16 where outliers would make int8 coarse",)
        if onednn:
            reasons += ("the prior's and the encoders' " + onednn_reason,)
        return Plan(dtype=torch.bfloat16, channels_last=True, compile=amx, int8_convolutions=int8, int8_linears=int8,
                    onednn_linears=onednn, products_attention=not amx, reasons=reasons)
    why_not = "no native bf16 on this CPU: bf16 would fall back to slow kernels, so fp32"
    # measured on AVX2 (Zen 3) only: elsewhere oneDNN's convolutions stay until a measurement says otherwise
    avx2 = capability.upper() == "AVX2"
    convolutions = ("Winograd F(4x4, 3x3) for 3x3 convolutions on large maps (fp32 convolutions already run near "
                    "the FMA peak there, and it does 4x fewer multiplications: 1.15-2.3x per convolution on Zen 3), "
                    "one GEMM on the smallest (1.8-2x)" if avx2 else
                    "oneDNN's convolutions: Winograd/GEMM convolutions were measured to pay on AVX2 only")
    return Plan(dtype=torch.float32, channels_last=True, compile=False, fast_convolutions=avx2,
                onednn_linears=onednn,
                reasons=(why_not, "channels_last: oneDNN's NHWC convolutions beat NCHW here too",
                         "SDPA's fused CPU attention", convolutions, *(onednn_reason,) * onednn,
                         "freed memory kept for reuse: no page faults on large activations",
                         "no torch.compile: not measured to pay back its start-up"))


def plan_for_this_cpu() -> Plan:
    return choose(cpu_capability(), cpu_flags(), cpu_vendor())


# --------------------------------------------------------------------------- the bf16 warning


def bf16_warning(dtype: Any, capability: str | None = None, flags: Iterable[str] | None = None) -> str | None:
    """The warning to give for running ``dtype`` on this CPU (or the one described), or None if it is fine.

    ``dtype`` may be a torch dtype or a name ("bf16", "bfloat16", ...).
    """
    if isinstance(dtype, str):
        is_bf16 = dtype.lower().replace("torch.", "") in ("bf16", "bfloat16")
    else:
        is_bf16 = dtype == torch.bfloat16
    if not is_bf16:
        return None
    capability = cpu_capability() if capability is None else capability
    flags = cpu_flags() if flags is None else flags
    if has_native_bf16(capability, flags):
        return None
    return (f"bf16 on this CPU ({capability}, no AMX or AVX-512 BF16) runs on slow emulated kernels and "
            f"will be many times slower than fp32; use fp32 (the default), or --fast, which picks "
            f"what this CPU runs fastest")


def warn_if_slow_dtype(dtype: Any, capability: str | None = None, flags: Iterable[str] | None = None) -> bool:
    """Warn (``UserWarning``) when ``dtype`` is bf16 and this CPU has no native bf16; True if it warned."""
    message = bf16_warning(dtype, capability, flags)
    if message is not None:
        warnings.warn(message, UserWarning, stacklevel=2)
    return message is not None


# --------------------------------------------------------------------------- applying a plan


class _Fp32Interface:
    """Put in front of a model's class while its weights are in a lower precision: to its callers
    it reports fp32, the dtype it takes and returns; inside its own calls, its weights' dtype."""

    @property
    def dtype(self) -> torch.dtype:
        if self.__dict__.get("_sfumato_fast_depth", 0):
            return super().dtype
        return torch.float32


_INTERFACE_CLASSES: dict[type, type] = {}


def _with_fp32_interface(cls: type) -> type:
    if cls not in _INTERFACE_CLASSES:
        _INTERFACE_CLASSES[cls] = type(cls.__name__, (_Fp32Interface, cls), {"__module__": cls.__module__,
                                                                            "__qualname__": cls.__qualname__})
    return _INTERFACE_CLASSES[cls]


def _cast(value: Any, dtype: torch.dtype | None, contiguous: bool = False, min_ndim: int = 0) -> Any:
    """Floating tensors in ``value`` (nested in tuples, lists, dicts, output dataclasses) cast to ``dtype``.

    Tensors with fewer than ``min_ndim`` dimensions are left alone; ``dtype=None`` keeps every dtype.
    """
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and value.ndim >= min_ndim:
            value = value if dtype is None else value.to(dtype)
            if contiguous and value.ndim == 4:
                value = value.contiguous()
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for item in dataclasses.fields(value):
            setattr(value, item.name, _cast(getattr(value, item.name), dtype, contiguous, min_ndim))
        return value
    if isinstance(value, dict):
        return type(value)((key, _cast(item, dtype, contiguous, min_ndim)) for key, item in value.items())
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(item, dtype, contiguous, min_ndim) for item in value)
    return value


def _channels_last(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.contiguous(memory_format=torch.channels_last) if value.ndim == 4 else value
    if isinstance(value, dict):
        return type(value)((key, _channels_last(item)) for key, item in value.items())
    if isinstance(value, (tuple, list)):
        return type(value)(_channels_last(item) for item in value)
    return value


def _wrap(model: nn.Module, method: Any, dtype: torch.dtype | None, channels_last: bool) -> Any:
    """``method`` run on inputs cast to ``dtype`` (None: as given); its outputs come back fp32 when
    ``dtype`` is given, and contiguous with ``channels_last``."""

    def fast(*args: Any, **kwargs: Any) -> Any:
        if dtype is not None:
            # timesteps (0-d / 1-d) stay as they are: bf16 would round step 999 to 1000
            args, kwargs = _cast(args, dtype, min_ndim=2), _cast(kwargs, dtype, min_ndim=2)
        if channels_last:
            # feature maps in channels-last from the first layer on (convs whose weights follow
            # their input's layout would otherwise turn back to NCHW)
            args, kwargs = _channels_last(args), _channels_last(kwargs)
        state = model.__dict__
        state["_sfumato_fast_depth"] = state.get("_sfumato_fast_depth", 0) + 1
        try:
            result = method(*args, **kwargs)
        finally:
            state["_sfumato_fast_depth"] -= 1
        return _cast(result, None if dtype is None else torch.float32, contiguous=channels_last)

    fast.__wrapped__ = method
    return fast


@dataclass
class _Undo:
    """What ``optimize`` changed on one model, to put back."""

    original_class: type
    wrapped: tuple[str, ...]
    cast: bool  # the weights were cast to the plan's dtype
    tensors: dict[str, torch.Tensor] | None  # fp32 weights and buffers, when they were cast and kept
    compiled: bool
    plan: Plan
    fast_convolutions: bool = False  # its 3x3 convolutions became FastConv2d
    int8_convolutions: bool = False  # its convolutions became Int8Conv2d
    int8_linears: bool = False  # its linear layers became Int8Linear
    onednn_linears: bool = False  # its fp32 linear layers became OnednnLinear
    products_attention: bool = False  # its attention layers run products_attention


def _tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*model.named_parameters(), *model.named_buffers()]


def _has_4d_weights(module: nn.Module) -> bool:
    return any(p.ndim == 4 for p in module.parameters())


def optimize(pipe: Any, plan: Plan | None = None, *, compile: bool | None = None, keep_fp32: bool = True) -> Any:
    """Switch ``pipe`` (a pipeline, or one model) to the fast CPU mode; returns it.

    ``plan``: what to do, by default ``choose``'s plan for this CPU; ``compile``
    overrides the plan's ``torch.compile`` choice. With ``keep_fp32`` (the default)
    the fp32 weights are kept aside when a plan casts them, so ``disable`` gives
    back the exact parity mode; ``keep_fp32=False`` saves that memory (but int8
    convolutions hold their fp32 weights, which they quantize when first run), and
    ``disable`` then casts the rounded weights back up.
    """
    plan = plan_for_this_cpu() if plan is None else plan
    if compile is not None:
        plan = dataclasses.replace(plan, compile=compile,
                                   reasons=plan.reasons + (f"torch.compile {'on' if compile else 'off'} by request",))
    models = _fast_models(pipe, encoders=plan.onednn_linears)
    if not models:
        raise TypeError(f"optimize() needs a pipeline or a model with one of {list(FAST_COMPONENTS)}, "
                        f"got {type(pipe).__name__}")
    for name, model in models:
        if getattr(model, "_sfumato_fast_undo", None) is not None:
            continue  # already fast: optimize is idempotent
        _optimize_model(model, plan_for_part(plan, name), keep_fp32)
    if not isinstance(pipe, nn.Module):
        pipe.__dict__["_sfumato_fast_plan"] = plan
    logger.info("fast CPU mode: %s (%s)", plan.describe(), "; ".join(plan.reasons))
    return pipe


def plan_for_part(plan: Plan, name: str) -> Plan:
    """What ``plan`` does to a pipeline's component ``name`` (``prior``, ``unet``, ``prior_prior``, ...): the plan
    itself; for its ``fp32_parts`` the plan in fp32 without int8; for an encoder its oneDNN linear layers alone."""
    kind = _component_kind(name)
    if kind in ENCODER_COMPONENTS:
        return Plan(onednn_linears=plan.onednn_linears, keep_freed_memory=plan.keep_freed_memory,
                    channels_last=False, fp32_parts=plan.fp32_parts, reasons=plan.reasons)
    if kind in plan.fp32_parts:
        return dataclasses.replace(plan, dtype=torch.float32, int8_convolutions=False, int8_linears=False,
                                   products_attention=False)
    return plan


def _component_kind(name: str) -> str | None:
    """``unet`` for ``unet``, ``decoder_unet`` or ``decoder_pipe.unet``; ``text_encoder`` for
    ``prior_text_encoder``; None for a component the fast mode leaves alone."""
    base = name.rsplit(".", 1)[-1]
    for kind in ENCODER_COMPONENTS + FAST_COMPONENTS:
        if base == kind or base.endswith("_" + kind):
            return kind
    return None


def disable(pipe: Any) -> Any:
    """Undo ``optimize``: the models get back their fp32 weights, NCHW layout and plain calls."""
    for _, model in _fast_models(pipe, encoders=True):
        undo = getattr(model, "_sfumato_fast_undo", None)
        if undo is None:
            continue
        for method in undo.wrapped:
            model.__dict__.pop(method, None)
        if undo.compiled:
            model._compiled_call_impl = None
        if undo.fast_convolutions:
            from .nn.fast_conv import free_buffers, stop_fast_convolutions

            stop_fast_convolutions(model)
            free_buffers()
        if undo.int8_convolutions:
            from .nn.int8_conv import stop_int8_convolutions

            stop_int8_convolutions(model)
        if undo.int8_linears:
            from .nn.int8_linear import stop_int8_linears

            stop_int8_linears(model)
        if undo.onednn_linears:
            from .nn.onednn_linear import stop_onednn_linears

            stop_onednn_linears(model)
        if undo.products_attention:
            _set_products_attention(model, False)
        if undo.tensors is not None:
            for key, tensor in _tensors(model):
                tensor.data = undo.tensors[key]
        elif undo.cast:
            model.to(torch.float32)
        model.to(memory_format=torch.contiguous_format)
        model.__class__ = undo.original_class
        model.__dict__.pop("_sfumato_fast_depth", None)
        del model._sfumato_fast_undo
    if not isinstance(pipe, nn.Module):
        pipe.__dict__.pop("_sfumato_fast_plan", None)
    return pipe


def current_plan(pipe: Any) -> Plan | None:
    """The plan ``pipe`` runs under, or None in the parity mode."""
    if isinstance(pipe, nn.Module):
        undo = getattr(pipe, "_sfumato_fast_undo", None)
        return None if undo is None else undo.plan
    return pipe.__dict__.get("_sfumato_fast_plan")


def _fast_models(pipe: Any, encoders: bool = False) -> list[tuple[str, nn.Module]]:
    """The models ``optimize`` converts in ``pipe`` (with ``encoders``, the text and image encoders too), by name."""
    if isinstance(pipe, nn.Module):  # one model, given on purpose: the plan applies as it is
        return [(type(pipe).__name__, pipe)]
    kinds = FAST_COMPONENTS + ENCODER_COMPONENTS * encoders
    models, seen = [], set()
    components = getattr(pipe, "components", {}) or {}
    for name, model in components.items():
        # combined pipelines name their prior's parts "prior_<part>": "prior_prior" is a prior
        if isinstance(model, nn.Module) and _component_kind(name) in kinds and id(model) not in seen:
            seen.add(id(model))
            from .models.controlnet import MultiControlNetModel

            # several ControlNets: each is a model the pipeline calls
            models += [(name, net) for net in model.nets] if isinstance(model, MultiControlNetModel) \
                else [(name, model)]
    # combined pipelines hold their sub-pipelines' models under other names
    for name, value in components.items():
        if not isinstance(value, nn.Module) and hasattr(value, "components"):
            for sub_name, model in _fast_models(value, encoders):
                if id(model) not in seen:
                    seen.add(id(model))
                    models.append((f"{name}.{sub_name}", model))
    return models


# bump when what the fast mode keeps of a model changes meaning
_STORED_FORMAT = 1


def _stored_conversion(model: nn.Module, dtype: torch.dtype | None, layout: bool,
                       int8_layers: list[str]) -> dict[str, torch.Tensor] | None:
    """The fast mode's weights for ``model``, kept on disk (``sfumato.checkpoint.derived.cached_tensors``):
    every floating tensor in ``dtype`` (None: its own) and 4-d ones laid out (O, H, W, I) with ``layout``; and
    for each of ``int8_layers`` its weights as ``quantize_weight`` makes them ("int8:<layer>", "int8-scale:<layer>").

    None when nothing is cast or quantized (nothing worth keeping) or nothing can be kept: the caller converts in
    memory. A full-size 2.2 UNet's come to 3.8 GB (bf16 and int8) and take 18-28 s more to make and write once; read
    back they are mapped, and int8 layers' bf16 weights, used only by the calls that fall back, are read only
    then.
    """
    if dtype is None and not int8_layers:
        return None
    from .checkpoint.derived import cached_tensors
    from .nn.int8_conv import quantize_weight, weight_scale

    originals = dict(_tensors(model))
    spec: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    for key, tensor in originals.items():
        if tensor.is_floating_point() and (dtype is not None or layout and tensor.ndim == 4):
            shape = tuple(tensor.shape)
            spec[key] = (dtype or tensor.dtype, (shape[0], *shape[2:], shape[1]) if layout and len(shape) == 4
                         else shape)
    for name in int8_layers:
        weight = model.get_submodule(name).weight
        spec["int8:" + name] = (torch.int8, tuple(weight.shape))
        spec["int8-scale:" + name] = (torch.float32, (weight.shape[0],))

    def make(key: str) -> torch.Tensor:
        kind, _, name = key.partition(":")
        if kind == "int8":
            return quantize_weight(model.get_submodule(name).weight)[0]
        if kind == "int8-scale":
            return weight_scale(model.get_submodule(name).weight)
        tensor = originals[key].detach().to(spec[key][0])
        return tensor.permute(0, 2, 3, 1) if layout and tensor.ndim == 4 else tensor

    layers = hashlib.sha256("\n".join(int8_layers).encode()).hexdigest()[:16]
    name = (f"fast-cpu-weights-{_STORED_FORMAT} {dtype or 'own dtype'} "
            f"{'channels-last' if layout else 'contiguous'} int8 {len(int8_layers)} layers {layers}")
    # int8 layers use their float weights only in the calls that fall back: not read ahead
    seldom = [name + ".weight" for name in int8_layers if name + ".weight" in spec]
    return cached_tensors(model, name, spec, make, seldom)


def _optimize_model(model: nn.Module, plan: Plan, keep_fp32: bool) -> None:
    kept = None
    current = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    cast = plan.dtype != current and current == torch.float32
    if plan.dtype != current and not cast:
        # a model loaded in another dtype on purpose keeps it; it still gets the layout
        logger.info("fast CPU mode: %s stays in %s (the plan's %s applies to fp32 models)",
                    type(model).__name__, current, plan.dtype)
        warn_if_slow_dtype(current)
        plan = dataclasses.replace(plan, dtype=current)
    int8_layers: dict[str, list[str]] = {"convolutions": [], "linears": []}
    if plan.int8_convolutions:
        from .nn import int8_conv

        int8_layers["convolutions"] = int8_conv.to_convert(model)
    if plan.int8_linears:
        from .nn import int8_linear

        int8_layers["linears"] = int8_linear.to_convert(model)
    layout = plan.channels_last and _has_4d_weights(model)
    # the converted weights kept on disk from an earlier run (or written now): nothing quantized or cast here
    stored = _stored_conversion(model, plan.dtype if cast else None, layout,
                                int8_layers["convolutions"] + int8_layers["linears"])
    quantized = None if stored is None else {name: (stored["int8:" + name], stored["int8-scale:" + name])
                                             for names in int8_layers.values() for name in names}
    int8_convolutions = int8_linears = False
    if int8_layers["convolutions"]:
        from .nn.int8_conv import use_int8_convolutions

        # before any cast: without kept weights, int8 layers quantize the fp32 ones (linear layers now,
        # convolutions when first run)
        int8_convolutions = use_int8_convolutions(model, quantized) > 0
    if int8_layers["linears"]:
        from .nn.int8_linear import use_int8_linears

        int8_linears = use_int8_linears(model, quantized) > 0
    if cast and keep_fp32:
        kept = {key: tensor.data for key, tensor in _tensors(model)}
    if stored is not None:
        for key, tensor in _tensors(model):
            if key in stored:  # 4-d ones are kept as (O, H, W, I): seen as (O, I, H, W), that is channels-last
                tensor.data = stored[key].permute(0, 3, 1, 2) if layout and tensor.ndim == 4 else stored[key]
    else:
        if cast:
            model.to(plan.dtype)
        if layout:
            model.to(memory_format=torch.channels_last)
    wrapped = []
    if cast or layout:
        for method in _ENTRY_POINTS:
            if callable(getattr(model, method, None)):
                model.__dict__[method] = _wrap(model, getattr(model, method),
                                               plan.dtype if cast else None, layout)
                wrapped.append(method)
    original_class = model.__class__
    if cast:
        model.__class__ = _with_fp32_interface(original_class)
    fast_convolutions = False
    if plan.fast_convolutions and plan.dtype == torch.float32:
        from .nn.fast_conv import use_fast_convolutions

        fast_convolutions = use_fast_convolutions(model) > 0
    onednn_linears = False
    if plan.onednn_linears and plan.dtype == torch.float32:
        from .nn.onednn_linear import use_onednn_linears

        # after the int8 swap: only the linear layers left in fp32
        onednn_linears = use_onednn_linears(model) > 0
    products_attention = (plan.products_attention and plan.dtype == torch.bfloat16
                          and _set_products_attention(model, True))
    if plan.keep_freed_memory:
        keep_freed_memory()
    compiled = False
    if plan.compile:
        model.compile(dynamic=False)
        compiled = True
    model._sfumato_fast_undo = _Undo(original_class, tuple(wrapped), cast, kept, compiled, plan, fast_convolutions,
                                     int8_convolutions, int8_linears, onednn_linears, products_attention)


def _set_products_attention(model: nn.Module, on: bool) -> bool:
    """Turn ``products_attention`` on or off (back to the class's default) for ``model``'s attention layers (those
    whose class declares it); returns whether it has any."""
    layers = [module for module in model.modules() if hasattr(type(module), "products_attention")]
    for layer in layers:
        if on:
            layer.products_attention = True
        else:
            layer.__dict__.pop("products_attention", None)
    return bool(layers)
