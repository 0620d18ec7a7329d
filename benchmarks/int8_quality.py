"""What int8 layers do to pictures: the built-in model with every convolution and linear layer of 32+ channels in int8.

Usage:
    python benchmarks/int8_quality.py [--count 270] [--threads 2]

The fast mode quantizes only convolutions large enough to pay (the full-size
models'); the built-in model's are all below that size, so this lowers the
threshold to zero and runs every convolution and linear layer of its UNet
and MoVQ with at least 32 channels each way through ``sfumato.nn.int8_conv``
and ``int8_linear`` (the prior stays fp32, as in the fast mode; inputs quantized
to uint8 per picture at every call, weights to int8 per output channel), on
the held-out prompts of ``python -m sfumato.demo.evaluate``. It prints the
evaluator's accuracy per criterion for the parity mode (fp32), the bf16 fast
plan without int8, and the same plan with int8 convolutions (same seeds), and
the PSNR of each fast picture against its parity picture (mean, worst). The
issue's bar: PSNR >= 30 dB and the accuracy within 1 point. Needs a CPU with
native bf16 for the bf16 rows to be quick (elsewhere bf16 is emulated, slowly).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

import sfumato
from sfumato import fast
from sfumato.demo import builtin_model, evaluate, generation_defaults
from sfumato.nn import int8_conv, int8_linear, onednn_linear


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=270)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=10,
                        help="prompts per call (int8 inputs are quantized per picture, so a picture does not "
                             "depend on its neighbours; 1: as `sfumato generate` makes it)")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16",
                        help="the plan's dtype around the int8 convolutions")
    parser.add_argument("--sdpa", action="store_true",
                        help="SDPA attention even where this CPU's plan runs attention as bf16 matrix products")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not int8_conv.available():
        raise SystemExit("this PyTorch build has no oneDNN int8 convolution")
    folder = builtin_model("decoder")
    pipe = sfumato.AutoPipelineForText2Image.from_pretrained(folder, fast_start=True)
    pipe.set_progress_bar_config(disable=True)
    settings = generation_defaults(folder)
    prompts = evaluate.held_out_prompts(args.count)
    captions = [caption for caption, _ in prompts]
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    # this CPU's plan (its oneDNN linear layers too, where it has them) in the chosen dtype, without compilation
    base = dataclasses.replace(fast.plan_for_this_cpu(), dtype=dtype, int8_convolutions=False, int8_linears=False,
                               fast_convolutions=False, compile=False)
    if args.sdpa:
        base = dataclasses.replace(base, products_attention=False)

    runs = {}
    started = time.perf_counter()
    runs["parity"] = evaluate.generate(pipe, prompts, settings, batch=args.batch)
    seconds = {"parity": time.perf_counter() - started}
    # every qualifying layer, however small
    int8_conv.MIN_MULTIPLICATIONS = int8_linear.MIN_MULTIPLICATIONS = onednn_linear.MIN_MULTIPLICATIONS = 0
    for name, plan in ((f"fast {args.dtype}", base),
                       (f"fast {args.dtype} + int8", dataclasses.replace(base, int8_convolutions=True, int8_linears=True))):
        sfumato.optimize(pipe, plan)
        converted = sum(isinstance(m, (int8_conv.Int8Conv2d, int8_linear.Int8Linear))
                        for _, model in fast._fast_models(pipe) for m in model.modules())
        started = time.perf_counter()
        runs[name] = evaluate.generate(pipe, prompts, settings, batch=args.batch)
        seconds[name] = time.perf_counter() - started
        fast.disable(pipe)
        print(f"{name}: {plan.describe()}, {converted} int8 layers, {seconds[name]:.0f} s", flush=True)

    print(f"built-in model, {len(prompts)} held-out prompts, {args.batch} per call (parity {seconds['parity']:.0f} s)")
    for name, images in runs.items():
        print(f"--- {name}")
        print(evaluate.format_table(evaluate.evaluate(images, captions)))
        if name != "parity":
            scores = [evaluate.psnr(a, b) for a, b in zip(runs["parity"], images)]
            finite = [s for s in scores if np.isfinite(s)]
            print(f"PSNR vs parity: mean {np.mean(finite) if finite else float('inf'):.1f} dB, "
                  f"worst {min(scores):.1f} dB, identical pictures {len(scores) - len(finite)}/{len(scores)}")


if __name__ == "__main__":
    main()
