"""Seeded noise: the one place noise is drawn, so results match the reference seed for seed."""

from __future__ import annotations

from typing import Sequence

import torch


def randn_tensor(
    shape: Sequence[int],
    generator: torch.Generator | list[torch.Generator] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Standard normal noise of ``shape`` on ``device``.

    Noise is drawn on the generator's device (so a CPU generator gives the same
    numbers whatever the target device) and then moved. A list of generators
    draws one sample per generator along the batch dimension.
    """
    shape = tuple(shape)
    device = torch.device(device or "cpu")
    generators = generator if isinstance(generator, list) else None
    if generators is not None and len(generators) == 1:
        generator, generators = generators[0], None
    first = generators[0] if generators else generator
    draw_device = device
    if first is not None and first.device.type != device.type:
        if first.device.type != "cpu":
            raise ValueError(
                f"generator is on {first.device.type!r} but the noise is for {device.type!r}; "
                f"use a CPU generator or one on {device.type!r}"
            )
        draw_device = torch.device("cpu")
    if generators is not None:
        if len(generators) != shape[0]:
            raise ValueError(
                f"generator is a list of {len(generators)} generators, but the batch has {shape[0]} samples; "
                f"pass one generator or exactly {shape[0]}"
            )
        samples = [torch.randn((1, *shape[1:]), generator=g, device=draw_device, dtype=dtype) for g in generators]
        return torch.cat(samples, dim=0).to(device)
    return torch.randn(shape, generator=generator, device=draw_device, dtype=dtype).to(device)
