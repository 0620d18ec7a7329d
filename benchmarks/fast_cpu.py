"""Fast CPU mode vs parity mode vs the reference, full-size Kandinsky 2.2 parts, side by side in one run.

For the CPU it runs on, prints the CPU model, PyTorch's CPU capability, the
fast mode's plan, then times, interleaved (best of ``--repeats``):

* ``ref fp32``: the reference (diffusers) as it comes, fp32;
* ``ref best``: the reference's fastest set-up on this CPU: bf16 + channels_last
  (+ ``torch.compile`` with ``--compile``) where the CPU has native bf16, fp32 +
  channels_last elsewhere (bf16 without hardware support is a trap: many times
  slower), or ``ref fp32`` when that is faster;
* ``sfumato parity``: sfumato's default mode (the reference's numbers);
* ``sfumato fast``: ``sfumato.optimize(model)`` with the plan for this CPU;

for the decoder UNet step (512 px, CFG batch 2), the MoVQ decode (512 px, one
picture), the prior step (CFG batch 2; a pipeline's fast mode keeps its prior in
fp32, ``Plan.fp32_parts``, and so does this row), and with ``--768`` the UNet step at
768 px. Weights are random (the configurations are the real ones), and every
set-up runs the very same tensors; each is switched to and called once untimed
before its timed call (later steps of a picture, not its first). Ratios < 1 mean
sfumato is faster. Once sfumato's fast mode has run, the process keeps freed memory
(``sfumato.allocator``: no page faults on large activations), and so do the
reference's later calls: the ratios compare the computations, and
``--mechanisms`` shows what keeping memory is worth on its own. Each
run's process CPU time is reported next to its wall time: on a machine shared
with other work, wall times swing by tens of percent, CPU times much less
(run with OMP_WAIT_POLICY=PASSIVE so that spinning threads don't count).

    .venv/bin/python benchmarks/fast_cpu.py [--threads 2] [--repeats 2] [--parts unet,movq,prior] [--768]

A full-size UNet step is ~20 s in fp32 on a 2-core Zen 3, so the defaults
keep the run to ~10 minutes there. ``--txt2img`` adds an estimate of the
default 512 px text-to-image (25 prior steps, 100 decoder steps, one decode)
from the parts' times; it leaves out start-up and the text/image encoders
(``benchmarks/txt2img_cpu.py`` runs the whole picture, start-up included).
``--mechanisms`` instead times sfumato alone with the plan's mechanisms added
one at a time (fp32 + channels-last, then the plan's dtype, then freed memory
kept, then attention as bf16 matrix products, Winograd/GEMM or int8
convolutions and linear layers), for the UNet step and the MoVQ decode at
512 px: what each contributes on this CPU. Keeping freed memory cannot be
undone in a process, so the MoVQ's rows all have it.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kandinsky22_speed import MOVQ_CONFIG, PRIOR_CONFIG, UNET_CONFIG, pair  # noqa: E402

from sfumato import fast  # noqa: E402



# --------------------------------------------------------------------------- the four set-ups


class Setups:
    """One reference model and one sfumato model; each set-up switches them into its mode."""

    def __init__(self, reference, ours, plan: fast.Plan, part: str, compile_reference: bool):
        # sfumato's model gets what a pipeline's fast mode gives that component (the prior stays fp32)
        self.reference, self.ours, self.plan = reference, ours, fast.plan_for_part(plan, part)
        self.native_bf16 = plan.dtype == torch.bfloat16
        self.compile_reference = compile_reference
        self._reference_mode = "fp32"
        self._compiled_reference = None

    def reference_mode(self, mode: str):
        if mode != self._reference_mode:
            if mode == "best":
                if self.native_bf16:
                    self.reference.to(torch.bfloat16)
                self.reference.to(memory_format=torch.channels_last)
            else:
                self.reference.to(torch.float32).to(memory_format=torch.contiguous_format)
            self._reference_mode = mode
        if mode == "best" and self.compile_reference:
            if self._compiled_reference is None:
                self._compiled_reference = torch.compile(self.reference)
            return self._compiled_reference
        return self.reference

    def ours_mode(self, mode: str):
        if mode == "fast":
            if fast.current_plan(self.ours) is None:
                # the parity mode's conv weights follow their inputs' layouts: note them, to put
                # back (untimed) when switching back, as a parity-only process would have them
                self._parity_layout = {name: tensor.is_contiguous() for name, tensor in self.ours.named_parameters()}
                fast.optimize(self.ours, self.plan)
            return self.ours
        if fast.current_plan(self.ours) is not None:
            fast.disable(self.ours)
            for name, tensor in self.ours.named_parameters():
                if not getattr(self, "_parity_layout", {}).get(name, True):
                    tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
        return self.ours

    def reference_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self._reference_mode == "best" and self.native_bf16 else torch.float32


def time_setups(name: str, setups: Setups, call, repeats: int, flop: float | None, peak: dict) -> dict:
    """``call(model, dtype)`` for each set-up, interleaved; returns best seconds per set-up."""
    # switching a set-up's mode (casts, layouts, buffers) and its first call are not timed: a UNet
    # step is timed as the 2nd..100th steps of a picture run, after the first
    modes = {
        "ref fp32": lambda: (setups.reference_mode("fp32"), torch.float32),
        "ref best": lambda: (setups.reference_mode("best"), setups.reference_dtype()),
        "sfumato parity": lambda: (setups.ours_mode("parity"), torch.float32),
        "sfumato fast": lambda: (setups.ours_mode("fast"), torch.float32),
    }
    best = {key: float("inf") for key in modes}
    best_cpu = {key: float("inf") for key in modes}
    outputs = {}
    with torch.inference_mode():
        for repeat in range(repeats):
            for key, mode in modes.items():
                model, dtype = mode()
                call(model, dtype)
                start, start_cpu = time.perf_counter(), time.process_time()
                out = call(model, dtype)
                elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
                best[key] = min(best[key], elapsed)
                best_cpu[key] = min(best_cpu[key], cpu)
                if repeat == 0:
                    outputs[key] = out.float()
                print(f"    {name:<22} {key:<15} {elapsed:8.2f} s wall {cpu:8.2f} s cpu", flush=True)
    setups.ours_mode("parity")
    setups.reference_mode("fp32")
    scale = outputs["ref fp32"].abs().max().item()
    for key in ("sfumato parity", "sfumato fast", "ref best"):
        diff = (outputs[key] - outputs["ref fp32"]).abs().max().item()
        print(f"    {name}: {key} vs ref fp32 max abs diff {diff:.2e} (max |ref| {scale:.2e})")
    ref_best = min(best["ref fp32"], best["ref best"])
    row = dict(best, ref_best_effective=ref_best, cpu=best_cpu)
    cpu_ref_best = min(best_cpu["ref fp32"], best_cpu["ref best"])
    print(f"  {name:<22} process CPU seconds (robust to other load): ref fp32 {best_cpu['ref fp32']:.2f} | "
          f"ref best {cpu_ref_best:.2f} | parity {best_cpu['sfumato parity']:.2f} | "
          f"fast {best_cpu['sfumato fast']:.2f} || parity/ref fp32 "
          f"{best_cpu['sfumato parity'] / best_cpu['ref fp32']:.3f}  fast/ref best "
          f"{best_cpu['sfumato fast'] / cpu_ref_best:.3f}", flush=True)
    peak_note = ""
    if flop:  # counted as direct convolutions: Winograd or int8 can go past 100%
        peak_note = "  fast reaches " + ", ".join(f"{flop / best['sfumato fast'] / rate:.0%} of the {kind} GEMM rate"
                                                   for kind, rate in peak.items())
    print(f"  {name:<22} ref fp32 {best['ref fp32']:7.2f} s | ref best {ref_best:7.2f} s | "
          f"parity {best['sfumato parity']:7.2f} s | fast {best['sfumato fast']:7.2f} s || "
          f"parity/ref fp32 {best['sfumato parity'] / best['ref fp32']:.3f}  "
          f"fast/ref best {best['sfumato fast'] / ref_best:.3f}  "
          f"fast/ref fp32 {best['sfumato fast'] / best['ref fp32']:.3f}{peak_note}", flush=True)
    return row


# --------------------------------------------------------------------------- the parts


def unet_flop(latent: int) -> float:
    # ~1.7 TFLOP per CFG-batch-2 step at 64x64 latents, growing with the pixel count
    return 1.7e12 * (latent / 64) ** 2


def bench_unet(plan, args, size: int, peak: dict) -> dict:
    import diffusers

    import sfumato

    reference, ours = pair(diffusers.UNet2DConditionModel, sfumato.UNet2DConditionModel, UNET_CONFIG, torch.float32)
    latent = size // 8
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, latent, latent, generator=generator)
    embeds = torch.randn(2, 1280, generator=generator)
    t = torch.tensor(500)

    def call(model, dtype):
        return model(sample.to(dtype), t, encoder_hidden_states=None,
                     added_cond_kwargs={"image_embeds": embeds.to(dtype)}).sample

    setups = Setups(reference, ours, plan, "unet", args.compile)
    return time_setups(f"unet step {size}px b2", setups, call, args.repeats, unet_flop(latent), peak)


def bench_movq(plan, args, peak: dict) -> dict:
    import diffusers

    import sfumato

    reference, ours = pair(diffusers.VQModel, sfumato.VQModel, MOVQ_CONFIG, torch.float32)
    latents = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0))

    def call(model, dtype):
        decode = model.decode if hasattr(model, "decode") else model._orig_mod.decode
        return decode(latents.to(dtype), force_not_quantize=True).sample

    setups = Setups(reference, ours, plan, "movq", compile_reference=False)
    return time_setups("movq decode 512px b1", setups, call, args.repeats, None, peak)


def bench_prior(plan, args, peak: dict) -> dict:
    import diffusers

    import sfumato

    reference, ours = pair(diffusers.PriorTransformer, sfumato.PriorTransformer, PRIOR_CONFIG, torch.float32)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 1280, generator=generator)
    proj = torch.randn(2, 1280, generator=generator)
    states = torch.randn(2, 77, 1280, generator=generator)
    mask = torch.ones(2, 77, dtype=torch.bool)
    t = torch.tensor(500)

    def call(model, dtype):
        return model(latents.to(dtype), timestep=t, proj_embedding=proj.to(dtype),
                     encoder_hidden_states=states.to(dtype), attention_mask=mask).predicted_image_embedding

    setups = Setups(reference, ours, plan, "prior", args.compile)
    return time_setups("prior step b2", setups, call, max(args.repeats, 3), None, peak)


# --------------------------------------------------------------------------- main


def mechanisms(plan: fast.Plan, repeats: int) -> None:
    """sfumato's UNet step and MoVQ decode under the plan's mechanisms, added one at a time."""
    import diffusers

    import sfumato

    steps = [("parity (fp32)", None)]
    current = fast.Plan(dtype=torch.float32, channels_last=True, keep_freed_memory=False)
    steps.append(("fp32 + channels_last + SDPA", current))
    if plan.dtype != torch.float32:
        current = dataclasses.replace(current, dtype=plan.dtype)
        steps.append((f"+ {plan.describe().split(' + ')[0]}", current))
    if plan.keep_freed_memory:
        current = dataclasses.replace(current, keep_freed_memory=True)
        steps.append(("+ freed memory kept", current))
    for flag, label in (("products_attention", "+ attention as bf16 products"),
                        ("fast_convolutions", "+ Winograd/GEMM convolutions"),
                        ("int8_convolutions", "+ int8 convolutions"),
                        ("int8_linears", "+ int8 linear layers"), ("compile", "+ torch.compile")):
        if getattr(plan, flag):
            current = dataclasses.replace(current, **{flag: True})
            steps.append((label, current))
    generator = torch.Generator().manual_seed(0)
    sample, embeds = torch.randn(2, 4, 64, 64, generator=generator), torch.randn(2, 1280, generator=generator)
    latents = torch.randn(1, 4, 64, 64, generator=generator)
    parts = (("unet step 512px b2", diffusers.UNet2DConditionModel, sfumato.UNet2DConditionModel, UNET_CONFIG,
              lambda model: model(sample, torch.tensor(500), encoder_hidden_states=None,
                                  added_cond_kwargs={"image_embeds": embeds}).sample),
             ("movq decode 512px b1", diffusers.VQModel, sfumato.VQModel, MOVQ_CONFIG,
              lambda model: model.decode(latents, force_not_quantize=True).sample))
    for name, reference_class, ours_class, config, call in parts:
        reference, ours = pair(reference_class, ours_class, config, torch.float32)
        del reference
        previous = None
        with torch.inference_mode():
            for label, step_plan in steps:
                if step_plan is not None:
                    fast.optimize(ours, step_plan)
                call(ours)  # untimed: buffers, packed weights, compilation
                times = []
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                for _ in range(repeats):
                    start = time.perf_counter()
                    call(ours)
                    times.append(time.perf_counter() - start)
                faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) // repeats
                best = min(times)
                change = "" if previous is None else f"  x{previous / best:.2f} over the line above"
                print(f"  {name:<22} {label:<34} {best:7.2f} s {faults:8d} page faults per call{change}", flush=True)
                previous = best
                if step_plan is not None:
                    fast.disable(ours)
        del ours


def gemm_rates(bf16: bool) -> dict[str, float]:
    """FLOP/s of one large matrix product in fp32 (and bf16 where the CPU has it natively): what this CPU
    reaches in practice, without guessing its vector width or clock (Zen 4 runs AVX-512 on 256-bit units)."""
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))[:2 if bf16 else 1]:
        a = torch.randn(4096, 4096).to(dtype)
        a @ a
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            a @ a
            seconds.append(time.perf_counter() - start)
        rates[name] = 2 * 4096**3 / min(seconds)
    return rates


def cpu_ghz() -> float | None:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("cpu MHz"):
                    return float(line.split(":")[1]) / 1000
    except OSError:
        pass
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--parts", default="prior,unet,movq")
    parser.add_argument("--768", dest="size_768", action="store_true", help="also the UNet step at 768 px")
    parser.add_argument("--txt2img", action="store_true", help="estimate the default 512 px text-to-image")
    parser.add_argument("--compile", action="store_true", help="compile the reference's best set-up (slow start)")
    parser.add_argument("--mechanisms", action="store_true",
                        help="sfumato alone: the plan's mechanisms added one at a time, UNet step and MoVQ decode")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import diffusers

    diffusers.utils.logging.set_verbosity_error()  # its note on .to(dtype) after from_config is noise here

    capability, flags = fast.cpu_capability(), fast.cpu_flags()
    plan = fast.plan_for_this_cpu()
    shown = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]
    ghz = cpu_ghz()
    print(f"CPU: {fast.cpu_model()} | PyTorch capability {capability} | flags {' '.join(shown)} | "
          f"{args.threads} threads | torch {torch.__version__} | {ghz or 0:.2f} GHz reported")
    peak = gemm_rates(fast.has_native_bf16(capability, flags))
    print("measured GEMM rates (4096^3, best of 3; the fraction-of-peak column divides by these): "
          + ", ".join(f"{name} {rate / 1e9:.0f} GFLOP/s" for name, rate in peak.items()))
    print(f"fast plan: {plan.describe()}")
    for reason in plan.reasons:
        print(f"  - {reason}")
    if not fast.has_native_bf16(capability, flags):
        print("reference best = fp32 + channels_last (bf16 without native support is many times slower)")
    else:
        print("reference best = bf16 + channels_last" + (" + torch.compile" if args.compile else ""))

    if args.mechanisms:
        mechanisms(plan, args.repeats)
        return
    rows = {}
    parts = args.parts.split(",")
    if "prior" in parts:
        rows["prior"] = bench_prior(plan, args, peak)
    if "unet" in parts:
        rows["unet"] = bench_unet(plan, args, 512, peak)
    if args.size_768:
        rows["unet768"] = bench_unet(plan, args, 768, peak)
    if "movq" in parts:
        rows["movq"] = bench_movq(plan, args, peak)

    print()
    print(f"{'part':<22}{'ref fp32':>10}{'ref best':>10}{'parity':>10}{'fast':>10}"
          f"{'parity/ref':>12}{'fast/best':>11}{'fast/fp32':>11}")
    for name, row in rows.items():
        print(f"{name:<22}{row['ref fp32']:>10.2f}{row['ref_best_effective']:>10.2f}{row['sfumato parity']:>10.2f}"
              f"{row['sfumato fast']:>10.2f}{row['sfumato parity'] / row['ref fp32']:>12.3f}"
              f"{row['sfumato fast'] / row['ref_best_effective']:>11.3f}"
              f"{row['sfumato fast'] / row['ref fp32']:>11.3f}")
    print(f"{'same, process CPU s':<22}")
    for name, row in rows.items():
        cpu = row["cpu"]
        cpu_best = min(cpu["ref fp32"], cpu["ref best"])
        print(f"{name:<22}{cpu['ref fp32']:>10.2f}{cpu_best:>10.2f}{cpu['sfumato parity']:>10.2f}"
              f"{cpu['sfumato fast']:>10.2f}{cpu['sfumato parity'] / cpu['ref fp32']:>12.3f}"
              f"{cpu['sfumato fast'] / cpu_best:>11.3f}{cpu['sfumato fast'] / cpu['ref fp32']:>11.3f}")
    if args.txt2img and {"prior", "unet", "movq"} <= rows.keys():
        def whole(key):
            return 25 * rows["prior"][key] + 100 * rows["unet"][key] + rows["movq"][key]

        ref_fp32, ref_best = whole("ref fp32"), whole("ref_best_effective")
        parity, quick = whole("sfumato parity"), whole("sfumato fast")
        print(f"default 512 px text-to-image, estimated from the parts (no start-up, no encoders): "
              f"ref fp32 {ref_fp32:.0f} s, ref best {ref_best:.0f} s, parity {parity:.0f} s, fast {quick:.0f} s; "
              f"fast/ref fp32 {quick / ref_fp32:.3f}")


if __name__ == "__main__":
    main()
