"""Convolution weights that follow their input's memory layout, for the same numbers with less copying.

PyTorch runs a convolution channels-last when its input *or* its weight is
channels-last; with a channels-last input and a contiguous weight, oneDNN first
copies the whole weight into channels-last, on every call. The reference's
UNets and MoVQ decoder turn channels-last after their first attention layer (a
view of the attention's tokens is channels-last), so most of their
convolutions pay that copy: ~4.4 GB of weights per Kandinsky 2.2 UNet step,
up to a third of a deep layer's time.

``follow_input_layout(model)`` gives every ``nn.Conv2d`` in ``model`` a
pre-hook that, when no gradient is being recorded, stores the weight in the
layout of the incoming activation. The layout decision (input channels-last or
not) and so the kernel and its rounding stay exactly those of a contiguous
weight; only the per-call copy goes. A layer whose input layout changes between
calls converts its weight once more.
"""

from __future__ import annotations

import torch
from torch import nn


def memory_format_of(tensor: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` for a 4-d tensor laid out channels-last (and not also plainly contiguous), else
    ``torch.contiguous_format``: the layout to give the tensors made from it."""
    if tensor.dim() == 4 and not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _is_channels_last(tensor: torch.Tensor) -> bool:
    """Dense channels-last strides, the layout convolution picks channels-last kernels for.

    A tensor that is also plainly contiguous (one channel, or one pixel) counts as
    contiguous, and so does a channels-last view with an odd batch stride (PyTorch's
    own layout test does not recognise it either).
    """
    if tensor.is_contiguous():
        return False
    batch, channels, height, width = tensor.shape
    return tensor.stride() == (channels * height * width, 1, width * channels, channels)


def _follow(conv: nn.Conv2d, inputs: tuple) -> None:
    if torch.is_grad_enabled() or not inputs:
        return
    hidden_states, weight = inputs[0], conv.weight
    if not isinstance(hidden_states, torch.Tensor) or hidden_states.ndim != 4 or weight.ndim != 4:
        return
    # (a 1x1 kernel is both at once, and is left as it is)
    wanted = torch.channels_last if _is_channels_last(hidden_states) else torch.contiguous_format
    if not weight.is_contiguous(memory_format=wanted):
        weight.data = weight.data.contiguous(memory_format=wanted)


# it changes a weight's layout, never its values (sfumato.checkpoint.derived keeps values past such hooks)
_follow.leaves_values_alone = True


def follow_input_layout(model: nn.Module) -> nn.Module:
    """Let every 2-d convolution in ``model`` keep its weight in its input's layout (see the module doc)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and not getattr(module, "_follows_input_layout", False):
            module.register_forward_pre_hook(_follow)
            module._follows_input_layout = True
    return model
