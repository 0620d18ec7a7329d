"""What sizes a checkpoint takes, from its config files alone (no torch, no weights)."""

from __future__ import annotations

import math
from typing import Any, Mapping


def movq_size_multiple(movq_config: Mapping[str, Any], unet_config: Mapping[str, Any]) -> int:
    """The multiple that heights and widths must have, from the MoVQ's and the UNet's configs alone.

    (The command line asks this before it loads any weights.)
    """
    scale = 2 ** (len(movq_config["block_out_channels"]) - 1)
    unet_factor = 2 ** (len(unet_config["block_out_channels"]) - 1)
    return math.lcm(scale * scale, scale * unet_factor)
