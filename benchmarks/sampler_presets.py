"""What the command line's sampler presets (``--preset``) cost in quality, on the built-in model.

Usage:
    python benchmarks/sampler_presets.py                 # 270 held-out prompts, every configuration
    python benchmarks/sampler_presets.py --count 90

For each configuration it generates one picture per held-out prompt of
:func:`sfumato.demo.evaluate.held_out_prompts` (every colour pair, seeds the
training never used), each with that prompt's seed, and prints:

- the rule-based evaluator's accuracy (every criterion right, and each one);
- PSNR against the default sampler's picture of the same prompt and seed
  (the folder's own scheduler and steps): mean and median over the prompts;
  and the mean PSNR against DPM-Solver++ with Karras sigmas at 50 decoder
  steps after the preset's prior steps: the picture that the fewer-step runs
  of that sampler approximate (the prior samples with noise, so a run with
  other prior steps starts from another image embedding);
- seconds per picture (generation only, batches of 10, this machine).

Two rows give the PSNR its scale: the default sampler against itself with the
next seed (unrelated pictures of the same prompt), and DPM-Solver++ with
Karras sigmas at many steps (where that sampler has converged). The default
sampler (DDPM) is stochastic: a deterministic sampler, even converged, draws
other pictures from the same seed, so against it PSNR only says "unrelated".
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import numpy as np
import torch


def main() -> None:
    from sfumato import AutoPipelineForText2Image
    from sfumato.cli.models import PRESETS, SCHEDULER_OPTIONS, SCHEDULERS
    from sfumato.demo import builtin_model, generation_defaults
    from sfumato.demo.evaluate import evaluate, generate, held_out_prompts
    from sfumato.demo.evaluate import psnr as picture_psnr
    import sfumato

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=270, help="held-out prompts (default 270)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    folder = builtin_model("decoder")
    pipe = AutoPipelineForText2Image.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    original = pipe.scheduler
    defaults = generation_defaults(folder)
    prompts = held_out_prompts(args.count)
    captions = [caption for caption, _ in prompts]
    fast = PRESETS["fast"]

    def karras():
        name = fast["scheduler"]
        klass = getattr(sfumato, SCHEDULERS[name])
        return klass.from_config(original.config, **SCHEDULER_OPTIONS[name])

    converged = (f"dpm++-karras, 50 + prior {fast['prior_steps']} (converged)", karras,
                 {"num_inference_steps": 50, "prior_num_inference_steps": fast["prior_steps"]})
    rows = [
        ("default: " + type(original).__name__, None, {}),
        converged,
        ("default, next seed (unrelated pictures)", None, {"seed_offset": 1}),
        (f"preset fast: dpm++-karras, {fast['steps']} + prior {fast['prior_steps']}", karras,
         {"num_inference_steps": fast["steps"], "prior_num_inference_steps": fast["prior_steps"]}),
        ("dpm++-karras, 15 + prior 10", karras, {"num_inference_steps": 15, "prior_num_inference_steps": 10}),
        ("dpm++-karras, 10 + prior 10", karras, {"num_inference_steps": 10, "prior_num_inference_steps": 10}),
        ("dpm++-karras, 10 + prior 5", karras, {"num_inference_steps": 10, "prior_num_inference_steps": 5}),
    ]
    print(f"CPU: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}; "
          f"{len(prompts)} held-out prompts; default settings {defaults}")
    print(f"{'configuration':52} {'all':>6} {'bg':>6} {'colour':>6} {'shape':>6} {'size':>6} "
          f"{'PSNR vs default':>15} {'median':>6} {'PSNR vs converged':>17} {'s/pic':>6}")
    reference = converged_images = None
    for label, scheduler, overrides in rows:
        offset = overrides.pop("seed_offset", 0)
        pipe.scheduler = scheduler() if scheduler else type(original).from_config(original.config)
        settings = {**defaults, **overrides}
        started = time.perf_counter()
        images = generate(pipe, [(caption, seed + offset) for caption, seed in prompts], settings)
        seconds = (time.perf_counter() - started) / len(prompts)
        report = evaluate(images, captions)
        reference = images if reference is None else reference
        converged_images = images if label == converged[0] else converged_images

        def psnr(against) -> tuple[str, str]:
            if against is None or against is images:
                return "", ""
            values = [picture_psnr(a, b) for a, b in zip(images, against)]
            finite = [v for v in values if math.isfinite(v)]
            return f"{np.mean(finite):.1f}", f"{np.median(values):.1f}"

        default, best = psnr(reference), psnr(converged_images)
        accuracy = report.accuracy
        print(f"{label:52} {accuracy['all']:6.1%} {accuracy['background']:6.1%} {accuracy['colour']:6.1%} "
              f"{accuracy['shape']:6.1%} {accuracy['size']:6.1%} {default[0]:>15} {default[1]:>6} {best[0]:>17} "
              f"{seconds:6.3f}", flush=True)


if __name__ == "__main__":
    main()
