"""Kandinsky 3 peak memory: sfumato's default, sequential-loading and int8-encoder modes next to the reference.

The full-size architecture (T5 Flan-UL2 encoder 8.7 B parameters, UNet 3.06 B,
MoVQ 0.27 B) with random weights, saved in the reference's folder layout in
bf16 (about 24 GB on disk), then one 1024x1024 picture (2 steps, guidance on)
per mode, each mode in a fresh subprocess. For each it reports the peak
resident memory (``VmHWM``) after loading and after generating, the peak of
the anonymous part (memory that cannot be dropped: memory-mapped weight files
can), and the time.

    # 1. write the checkpoint (streamed: a few hundred MB of memory, ~24 GB of disk)
    .venv/bin/python benchmarks/kandinsky3_memory.py make /path/to/k3-random
    # 2. run the modes side by side (each in its own process, killed past --limit)
    .venv/bin/python benchmarks/kandinsky3_memory.py compare /path/to/k3-random \\
        --modes sfumato,sfumato-sequential,sfumato-sequential-int8 --dtype mixed
    # where a mode cannot finish here (the reference runs bf16 convolutions, slow on AVX2 CPUs), measure
    # loading and the prompt's encoding alone:
    .venv/bin/python benchmarks/kandinsky3_memory.py compare /path/to/k3-random --modes reference,sfumato \\
        --dtype bf16 --stop-after encode
    # 3. int8 text encoder: cosine similarity of prompt embeddings against bf16
    .venv/bin/python benchmarks/kandinsky3_memory.py similarity /path/to/k3-random

``--dtype bf16`` runs every model in bf16 (the stored dtype); ``--dtype fp32`` (for the int8 modes) keeps
the text encoder's linear layers in int8 and computes everything in fp32, which on an AVX2 CPU runs the
encoder about four times faster than bf16 arithmetic (each int8 weight is widened to fp32 as its layer runs). On a CPU without
bf16 arithmetic (AVX2 only) bf16 convolutions are slow, so ``--dtype mixed``
keeps the text encoder in bf16 and runs the UNet and the MoVQ in fp32 (read
from the same bf16 files). The reference casts the latents to its text
encoder's dtype, so it can only run ``bf16``.

Safety: every run is a subprocess whose resident memory is polled and which is
killed past ``--limit`` (default 21 GiB); it is also the kernel's first choice
should memory run out (``oom_score_adj`` 1000), so a run cannot take the
machine down.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

GIB = 1024**3

# the released configurations (kandinsky-community/kandinsky-3)
UNET_CONFIG = {"in_channels": 4, "time_embedding_dim": 1536, "groups": 32, "attention_head_dim": 64,
               "layers_per_block": 3, "block_out_channels": [384, 768, 1536, 3072], "cross_attention_dim": 4096,
               "encoder_hid_dim": 4096}
MOVQ_CONFIG = {
    "act_fn": "silu", "block_out_channels": [256, 512, 512, 1024],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "norm_type": "spatial",
    "num_vq_embeddings": 16384, "out_channels": 3, "sample_size": 32, "scaling_factor": 0.18215,
    "up_block_types": ["AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
    "vq_embed_dim": 4,
}
# google/flan-ul2's encoder
T5_CONFIG = {"vocab_size": 32128, "d_model": 4096, "d_kv": 256, "d_ff": 16384, "num_layers": 32, "num_heads": 16,
             "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "dropout_rate": 0.0,
             "layer_norm_epsilon": 1e-6, "feed_forward_proj": "gated-silu", "is_encoder_decoder": False,
             "use_cache": False, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
             "tie_word_embeddings": False}
SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.00085,
                    "beta_end": 0.012, "clip_sample": False, "steps_offset": 1, "prediction_type": "epsilon",
                    "thresholding": False, "variance_type": "fixed_small"}
T5_SHARD_BYTES = 5 * 10**9  # transformers' classic max_shard_size
PROMPT = ("A photograph of the inside of a subway train. There are raccoons sitting on the seats. One of them is "
          "reading a newspaper. The window shows the city in the background.")
SIMILARITY_PROMPTS = [
    PROMPT, "a red cat", "an oil painting of a lighthouse at night, stormy sea, dramatic light",
    "a bowl of fruit on a wooden table, soft morning light, 8k photo",
]
MODES = ("reference", "sfumato", "sfumato-sequential", "sfumato-sequential-int8")


# --------------------------------------------------------------------------- the checkpoint


def _write_safetensors(path: Path, tensors: list[tuple[str, tuple[int, ...]]], make, dtype_name: str = "BF16"):
    """Write a safetensors file tensor by tensor: ``make(name, shape)`` gives each one just before it is written
    (``dtype_name`` ``BF16`` or ``F32``)."""
    import torch

    dtype = {"BF16": torch.bfloat16, "F32": torch.float32}[dtype_name]
    header, offset = {}, 0
    for name, shape in tensors:
        size = dtype.itemsize * int(torch.Size(shape).numel())
        header[name] = {"dtype": dtype_name, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        for name, shape in tensors:
            tensor = make(name, shape).to(dtype).contiguous()
            handle.write(tensor.view(torch.uint8).numpy().tobytes())
            del tensor
    return offset


# tensors a T5 checkpoint stores twice, with the same values (the encoder's embedding is the shared one)
TIED = {"encoder.embed_tokens.weight": "shared.weight"}


def _random_tensor(generator):
    import torch

    made: dict = {}

    def make(name: str, shape) -> "torch.Tensor":
        if name in TIED or name in TIED.values():  # the same values under both names
            key = TIED.get(name, name)
            if key not in made:
                made[key] = torch.randn(shape, generator=generator) * (shape[1] ** -0.5)
            return made[key] if name in TIED else made[key].clone()
        if name.endswith(("norm.weight", "layer_norm.weight", "final_layer_norm.weight")) or ".norm" in name:
            return torch.ones(shape)  # norms at 1 keep activations in range through 32 random layers
        if len(shape) <= 1:
            return torch.zeros(shape) if name.endswith("bias") else torch.ones(shape)
        fan_in = int(torch.Size(shape[1:]).numel())
        return torch.randn(shape, generator=generator) * (fan_in ** -0.5)

    return make


def _shapes(module) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(t.shape)) for name, t in module.state_dict().items()]


def make_checkpoint(folder: Path) -> None:
    """The full-size pipeline folder with random bf16 weights, written as the reference lays it out."""
    import diffusers
    import torch
    from transformers import T5Config, T5EncoderModel

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.pipelines.kandinsky3.builders import t5_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    make = _random_tensor(generator)

    index = {"_class_name": "Kandinsky3Pipeline", "_diffusers_version": diffusers.__version__,
             "movq": ["diffusers", "VQModel"], "scheduler": ["diffusers", "DDPMScheduler"],
             "text_encoder": ["transformers", "T5EncoderModel"], "tokenizer": ["transformers", "T5Tokenizer"],
             "unet": ["diffusers", "Kandinsky3UNet"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    diffusers.DDPMScheduler(**SCHEDULER_CONFIG).save_config(folder / "scheduler")
    t5_tokenizer().save_pretrained(folder / "tokenizer")

    for name, klass, config in (("unet", diffusers.Kandinsky3UNet, UNET_CONFIG),
                                ("movq", diffusers.VQModel, MOVQ_CONFIG)):
        with torch.device("meta"):
            model = klass(**config)
        model.save_config(folder / name)
        size = _write_safetensors(folder / name / "diffusion_pytorch_model.safetensors", _shapes(model), make)
        print(f"{name}: {size / 1e9:.2f} GB", flush=True)

    t5_config = T5Config(**T5_CONFIG)
    with torch.device("meta"):
        encoder = T5EncoderModel(t5_config)
    (folder / "text_encoder").mkdir(exist_ok=True)
    t5_config.architectures = ["T5EncoderModel"]
    t5_config.save_pretrained(folder / "text_encoder")
    shards, current, current_size = [], [], 0
    for entry in _shapes(encoder):
        size = 2 * int(torch.Size(entry[1]).numel())
        if current and current_size + size > T5_SHARD_BYTES:
            shards.append(current)
            current, current_size = [], 0
        current.append(entry)
        current_size += size
    shards.append(current)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        filename = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        total += _write_safetensors(folder / "text_encoder" / filename, shard, make)
        weight_map.update({name: filename for name, _ in shard})
        print(f"text_encoder shard {i}/{len(shards)}", flush=True)
    (folder / "text_encoder" / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    print(f"text_encoder: {total / 1e9:.2f} GB", flush=True)


# --------------------------------------------------------------------------- one run (in its own process)


def _status() -> dict[str, float]:
    fields = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) * 1024 / GIB
    return fields


def _torch_dtype(dtype: str):
    import torch

    if dtype == "bf16":
        return torch.bfloat16
    if dtype == "fp32":  # with an int8 text encoder: its linear layers int8, everything else fp32
        return torch.float32
    return {"text_encoder": torch.bfloat16, "default": torch.float32}


def run_mode(folder: Path, mode: str, dtype: str, size: int, steps: int, report: Path,
             stop_after: str | None = None) -> None:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    results: dict = {"mode": mode, "dtype": dtype}

    def note(stage: str) -> None:
        results[stage] = _status()
        results[stage]["seconds"] = round(time.time() - start, 1)
        report.write_text(json.dumps(results))

    start = time.time()
    if mode == "reference":
        import diffusers

        pipe = diffusers.Kandinsky3Pipeline.from_pretrained(folder, torch_dtype=_torch_dtype(dtype))
    else:
        import sfumato

        pipe = sfumato.Kandinsky3Pipeline.from_pretrained(folder, torch_dtype=_torch_dtype(dtype),
                                                          sequential_loading=mode != "sfumato")
        if mode.endswith("int8"):
            pipe.quantize_text_encoder("int8")
    note("loaded")
    if stop_after == "load":
        return
    if stop_after == "encode":  # the text encoder's share: what a pipeline holds once it has run
        pipe.encode_prompt(PROMPT, do_classifier_free_guidance=True, device=torch.device("cpu"), _cut_context=True)
        note("encoded")
        return
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    image = pipe(PROMPT, height=size, width=size, num_inference_steps=steps, generator=generator,
                 output_type="np").images
    results["image_std"] = float(image.std())
    note("generated")


# --------------------------------------------------------------------------- side by side


def _watch(pid: int, limit: float, samples: dict, key: str = "VmRSS") -> None:
    """Poll a process's memory; kill it past ``limit`` GiB of resident memory (``key``: ``VmRSS``, or ``RssAnon``
    to leave out memory-mapped files, which the kernel can drop)."""
    while True:
        try:
            with open(f"/proc/{pid}/status") as handle:
                status = {k: int(v.split()[0]) * 1024 / GIB for k, _, v in
                          (line.partition(":") for line in handle) if k in ("VmRSS", "RssAnon")}
        except (FileNotFoundError, ProcessLookupError, ValueError):
            return
        samples["peak_rss"] = max(samples.get("peak_rss", 0.0), status.get("VmRSS", 0.0))
        samples["peak_anon"] = max(samples.get("peak_anon", 0.0), status.get("RssAnon", 0.0))
        if status.get(key, 0.0) > limit:
            samples["killed"] = f"over {limit:.1f} GiB"
            os.kill(pid, 9)
            return
        time.sleep(0.1)


def run_watched(command: list[str], env: dict, limit: float, timeout: float, key: str = "VmRSS"
                ) -> tuple[int, str, dict]:
    """Run ``command`` as the kernel's first choice should memory run out, killed past ``limit`` GiB of ``key``
    (see :func:`_watch`) or ``timeout`` seconds; returns its exit status, its output and the memory samples
    (``peak_rss``, ``peak_anon``, ``killed``)."""
    process = subprocess.Popen(command, env=env, preexec_fn=lambda: Path("/proc/self/oom_score_adj")
                               .write_text("1000"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    samples: dict = {}
    watcher = threading.Thread(target=_watch, args=(process.pid, limit, samples, key), daemon=True)
    watcher.start()
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        samples["killed"] = f"timeout {timeout:.0f} s"
    watcher.join(timeout=1)
    return process.returncode, output, samples


def compare(folder: Path, modes: list[str], dtype: str, size: int, steps: int, limit: float,
            timeout: float, extra_path: str | None, stop_after: str | None = None) -> list[dict]:
    rows = []
    for mode in modes:
        report = Path(f"/tmp/kandinsky3_memory_{os.getpid()}_{mode}.json")
        report.unlink(missing_ok=True)
        env = dict(os.environ)
        if mode == "reference" and extra_path:  # e.g. accelerate, installed beside the project for the reference
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra_path, env.get("PYTHONPATH")]))
        command = [sys.executable, __file__, "run", str(folder), "--mode", mode, "--dtype", dtype, "--size",
                   str(size), "--steps", str(steps), "--report", str(report)]
        if stop_after:
            command += ["--stop-after", stop_after]
        returncode, output, samples = run_watched(command, env, limit, timeout)
        row = json.loads(report.read_text()) if report.exists() else {"mode": mode, "dtype": dtype}
        row.update(samples, returncode=returncode)
        if returncode != 0 and "killed" not in row:
            row["error"] = output.strip().splitlines()[-1][:200] if output.strip() else "failed"
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| mode | dtype | load peak RSS | peak after encoding the prompt | generation peak RSS | "
             "peak anonymous | time | result |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]

    def gib(stage: dict) -> str:
        return f"{stage['VmHWM']:.2f} GiB" if stage else "-"

    for row in rows:
        loaded, encoded, generated = row.get("loaded", {}), row.get("encoded", {}), row.get("generated", {})
        done = generated or encoded or loaded
        if row.get("killed"):
            result = f"killed: {row['killed']} (reached {row.get('peak_rss', 0):.2f} GiB)"
        elif row.get("error"):
            result = row["error"]
        else:
            result = "ok" if generated else f"stopped after {'encoding' if encoded else 'loading'}"
        lines.append(f"| {row['mode']} | {row['dtype']} | {gib(loaded)} | {gib(encoded)} | {gib(generated)} | "
                     f"{row.get('peak_anon', 0):.2f} GiB | {done.get('seconds', 0):.0f} s | {result} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- int8 vs bf16


def similarity(folder: Path) -> None:
    """Cosine similarity of each prompt's embeddings (over its real tokens) with the int8 encoder vs bf16."""
    import torch

    import sfumato

    torch.set_num_threads(os.cpu_count() or 1)
    pipe = sfumato.Kandinsky3Pipeline.from_pretrained(folder, torch_dtype=torch.bfloat16, sequential_loading=True)
    embeds = {}
    for kind in ("bf16", "int8"):
        if kind == "int8":
            pipe.quantize_text_encoder("int8")
        start = time.time()
        embeds[kind] = [pipe.encode_prompt(prompt, do_classifier_free_guidance=False, _cut_context=True)[::2]
                        for prompt in SIMILARITY_PROMPTS]
        pipe.maybe_free_model_hooks()
        print(f"{kind}: {time.time() - start:.0f} s, peak RSS {_status()['VmHWM']:.2f} GiB", flush=True)
    for prompt, (ref, mask), (got, _) in zip(SIMILARITY_PROMPTS, embeds["bf16"], embeds["int8"]):
        keep = mask[0].bool()
        a, b = ref[0, keep].float(), got[0, keep].float()
        per_token = torch.nn.functional.cosine_similarity(a, b, dim=-1)
        whole = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
        print(f"{prompt[:40]!r:44} tokens {int(keep.sum()):3d}  cosine: whole {whole:.5f}, per token "
              f"min {per_token.min():.5f} mean {per_token.mean():.5f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("make").add_argument("folder", type=Path)
    for name in ("run", "compare"):
        p = sub.add_parser(name)
        p.add_argument("folder", type=Path)
        p.add_argument("--dtype", choices=("bf16", "mixed", "fp32"), default="mixed",
                       help="fp32 only with the int8 modes (a float32 T5 alone is 35 GB)")
        p.add_argument("--size", type=int, default=1024)
        p.add_argument("--steps", type=int, default=2)
        p.add_argument("--stop-after", choices=("load", "encode"), default=None,
                       help="measure loading only, or loading and the prompt's encoding")
        if name == "run":
            p.add_argument("--mode", choices=MODES, required=True)
            p.add_argument("--report", type=Path, required=True)
        else:
            p.add_argument("--modes", default=",".join(MODES))
            p.add_argument("--limit", type=float, default=21.0, help="GiB of resident memory a run may use")
            p.add_argument("--timeout", type=float, default=3 * 3600)
            p.add_argument("--reference-path", default=None,
                           help="extra import path for the reference run (e.g. where accelerate is installed)")
    sub.add_parser("similarity").add_argument("folder", type=Path)
    args = parser.parse_args()
    if args.command == "make":
        make_checkpoint(args.folder)
    elif args.command == "run":
        run_mode(args.folder, args.mode, args.dtype, args.size, args.steps, args.report, args.stop_after)
    elif args.command == "compare":
        rows = compare(args.folder, args.modes.split(","), args.dtype, args.size, args.steps, args.limit,
                       args.timeout, args.reference_path, args.stop_after)
        print(table(rows))
    else:
        similarity(args.folder)


if __name__ == "__main__":
    main()
