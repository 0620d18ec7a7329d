"""Int8 weight-only quantization of linear layers (the T5 text encoder's), with PyTorch's own int8 matmul.

Each ``nn.Linear`` becomes an ``Int8Linear``: its weight stored as int8 with one
scale per output channel (symmetric, ``max |w| / 127``), the activations left in
the model's dtype. On the CPU a bf16 / fp16 input runs through PyTorch's
``_weight_int8pack_mm`` kernel (the one torchao's int8 weight-only mode uses
there), so no extra dependency is needed; other inputs multiply by the
dequantized weight. Flan-UL2's encoder goes from 17.4 GB (bf16) to 8.7 GB.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

_INT8_MAX = 127


class Int8Linear(nn.Module):
    """``y = x W^T + b`` with ``W`` stored as int8 rows times a per-row scale."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: torch.dtype | None = None,
                 device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        # named "weight" (int8) so code that asks a layer's weight dtype sees it is quantized
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False) \
            if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        """The int8 version of ``linear`` (a meta ``linear`` gives a meta skeleton)."""
        device = linear.weight.device
        quantized = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                        dtype=linear.weight.dtype, device=device)
        if device.type != "meta":
            quantized.set_weight(linear.weight)
            if linear.bias is not None:
                with torch.no_grad():
                    quantized.bias.copy_(linear.bias)
        return quantized

    def set_weight(self, weight: torch.Tensor) -> None:
        """Quantize a float ``(out_features, in_features)`` weight into this layer."""
        with torch.no_grad():
            weight = weight.float()
            scale = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / _INT8_MAX
            self.weight = torch.round(weight / scale[:, None]).clamp(-_INT8_MAX, _INT8_MAX).to(torch.int8)
            self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        # the kernel's AVX-512 path (torch 2.13) crashes (SIGSEGV) on more than one row when in_features is
        # not a multiple of 16; real T5 widths are multiples of 64, so only toy shapes take the other way
        if x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16) \
                and hasattr(torch, "_weight_int8pack_mm") and self.in_features % 16 == 0:
            out = torch._weight_int8pack_mm(rows.contiguous(), self.weight, self.scale.to(x.dtype))
        else:
            out = F.linear(rows, self.weight.to(x.dtype) * self.scale.to(x.dtype)[:, None])
        out = out.reshape(*x.shape[:-1], self.out_features)
        return out + self.bias if self.bias is not None else out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_linears(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` by an ``Int8Linear``, in place, one layer at a time.

    Each float weight is dropped as soon as its layer is quantized, so the model
    never holds both versions of more than one layer.
    """
    # hold no reference to a float layer beyond the one being quantized
    parents = [module for module in model.modules() if not isinstance(module, nn.Linear)]
    for parent in parents:
        names = [name for name, child in parent.named_children() if isinstance(child, nn.Linear)]
        for name in names:
            parent._modules[name] = Int8Linear.from_linear(parent._modules[name])
    return model


def load_int8(model: nn.Module, files: list[Path], dtype: torch.dtype) -> nn.Module:
    """Read weights into ``model``, a meta skeleton whose linear layers are ``Int8Linear``.

    Tensors are read one at a time and each linear weight is quantized as it
    arrives, so the float model never exists: memory holds the int8 model and
    one float tensor.
    """
    from ...checkpoint import CheckpointError
    from ...checkpoint.weights import iter_tensors

    modules = dict(model.named_modules(remove_duplicate=False))
    # a parameter shared by several modules (T5's tied embedding) -> every (module, name) holding it
    holders: dict[int, list[tuple[nn.Module, str]]] = {}
    skeleton = list(model.parameters())  # kept alive while loading, so no two parameters share an id
    for module in modules.values():
        for leaf, parameter in module._parameters.items():
            if parameter is not None and (module, leaf) not in holders.setdefault(id(parameter), []):
                holders[id(parameter)].append((module, leaf))
    loaded: dict[int, nn.Parameter] = {}  # id of a skeleton parameter -> the parameter read for it
    for path in files:
        for name, tensor in iter_tensors(path, dtype):
            owner_path, _, leaf = name.rpartition(".")
            owner = modules.get(owner_path)
            if isinstance(owner, Int8Linear) and leaf == "weight":
                owner.set_weight(tensor)
            elif owner is not None and leaf in owner._parameters:
                key = id(owner._parameters[leaf])
                if key in loaded:  # tied, and read already under its other name
                    if not torch.equal(loaded[key], tensor):
                        raise CheckpointError(f"weights in {str(path)!r}: {name!r} is tied to another tensor of "
                                              f"{type(model).__name__}, but the checkpoint stores different values")
                    continue
                parameter = nn.Parameter(tensor, requires_grad=False)
                for module, module_leaf in holders.get(key, [(owner, leaf)]):
                    module._parameters[module_leaf] = parameter  # the tie kept
                loaded[key] = loaded[id(parameter)] = parameter
            elif owner is not None and leaf in owner._buffers:
                owner._buffers[leaf] = tensor
            else:
                raise CheckpointError(f"weights in {str(path)!r} have tensor {name!r}, which "
                                      f"{type(model).__name__} does not")
            del tensor
    del skeleton
    left = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left and hasattr(model, "tie_weights"):  # a transformers model saves one of two tied weights
        model.tie_weights()
        left = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"weights for {type(model).__name__} miss {len(left)} tensor(s), e.g. {left[:3]}")
    return model
