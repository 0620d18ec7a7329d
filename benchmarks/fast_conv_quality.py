"""What Winograd convolutions do to pictures: the built-in model with every 3x3 convolution through F(4x4, 3x3).

Usage:
    python benchmarks/fast_conv_quality.py [--count 270] [--threads 2]

The fast mode uses Winograd only on convolutions large enough to pay (the
full-size models'); the built-in model's are all below that size, so this
lowers the threshold to zero and runs every 3x3 convolution of its UNet and
MoVQ (at least 32 channels each way) through the transforms, on the held-out
prompts of ``python -m sfumato.demo.evaluate``. It prints the evaluator's
accuracy per criterion for the parity mode and for the fast mode with
Winograd (same seeds), and the PSNR of each fast picture against its parity
picture (mean, worst). The issue's bar: PSNR >= 30 dB and the accuracy within
1 point.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import sfumato
from sfumato import fast
from sfumato.demo import builtin_model, evaluate, generation_defaults
from sfumato.nn import fast_conv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=270)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = builtin_model("decoder")
    pipe = sfumato.AutoPipelineForText2Image.from_pretrained(folder, fast_start=True)  # the same numbers, quietly
    pipe.set_progress_bar_config(disable=True)
    settings = generation_defaults(folder)
    prompts = evaluate.held_out_prompts(args.count)
    captions = [caption for caption, _ in prompts]

    started = time.perf_counter()
    parity = evaluate.generate(pipe, prompts, settings)
    parity_seconds = time.perf_counter() - started

    # every qualifying 3x3 convolution through Winograd's transforms, however small
    fast_conv.MIN_MULTIPLICATIONS = fast_conv.MIN_WINOGRAD_PIXELS = 0
    fast_conv.MAX_GEMM_PIXELS = -1
    plan = fast.choose("AVX2", ["avx2", "fma"])  # the fp32 plan, Winograd on, whatever this CPU is
    sfumato.optimize(pipe, plan)
    converted = sum(isinstance(m, fast_conv.FastConv2d) for _, model in fast._fast_models(pipe)
                    for m in model.modules())
    started = time.perf_counter()
    quick = evaluate.generate(pipe, prompts, settings)
    quick_seconds = time.perf_counter() - started

    print(f"built-in model, {len(prompts)} held-out prompts; fast plan: {plan.describe()}, "
          f"{converted} convolutions through Winograd")
    print(f"parity: {parity_seconds:.0f} s, fast with Winograd everywhere: {quick_seconds:.0f} s "
          f"(these convolutions are too small to gain; the full-size ones are what it is for)")
    for name, images in (("parity", parity), ("fast + Winograd", quick)):
        print(f"--- {name}")
        print(evaluate.format_table(evaluate.evaluate(images, captions)))
    scores = [evaluate.psnr(a, b) for a, b in zip(parity, quick)]
    finite = [s for s in scores if np.isfinite(s)]
    print(f"PSNR fast vs parity: mean {np.mean(finite) if finite else float('inf'):.1f} dB, "
          f"worst {min(scores):.1f} dB, identical pictures {len(scores) - len(finite)}/{len(scores)}")


if __name__ == "__main__":
    main()
