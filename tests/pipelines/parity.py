"""Shared helpers of the pipeline parity tests: seeded inputs and the comparison."""

import os

import numpy as np
import PIL.Image
import torch

ATOL = 1e-4


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def embeds(batch, dim, seed=0):
    g = generator(seed)
    return torch.randn(batch, dim, generator=g), torch.randn(batch, dim, generator=g)


def picture(height, width, seed=0):
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def mask(height, width):
    array = np.zeros((height, width), dtype=np.uint8)
    array[height // 4: height // 2, width // 3: width - 4] = 255
    return PIL.Image.fromarray(array)


def run_both(ours, theirs, **kwargs):
    seed = kwargs.pop("seed", 0)
    a = ours(**kwargs, generator=generator(seed)).images
    b = theirs(**kwargs, generator=generator(seed)).images
    return np.asarray(a), np.asarray(b)


def assert_close(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    diff = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
    log = os.environ.get("SFUMATO_PARITY_LOG")  # a file to collect every comparison's difference, for notes
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0]}\t{diff:.3g}\n")
    assert diff <= ATOL, f"max abs difference {diff}"


def assert_close_8bit(ours, theirs) -> str:
    """PIL pictures of both: equal floats (within ATOL) still round apart where one sits on a half level, and
    which ones do depends on the CPU's kernels (seen on an AVX-512 Zen 4): one level, on a few values at most.
    Returns a one-line summary for the PARITY print."""
    a, b = (np.stack([np.asarray(image, dtype=np.int16) for image in images]) for images in (ours, theirs))
    assert a.shape == b.shape, (a.shape, b.shape)
    differ = np.abs(a - b)
    assert differ.max() <= 1 and (differ > 0).mean() < 0.01, (differ.max(), int((differ > 0).sum()))
    return f"{differ.max()} levels on {int((differ > 0).sum())} values"
