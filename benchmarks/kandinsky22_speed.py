"""Full-size Kandinsky 2.2 speed: sfumato vs the reference, same weights, same inputs, one run.

Times one decoder UNet step (512x512 picture = 64x64 latents, batch 2, as with
classifier-free guidance) and one MoVQ decode (64x64 latents -> 512x512,
batch 2), in fp32 and bf16, and prints sfumato / reference time ratios
(< 1 means sfumato is faster). Weights are random (the configurations are
the real ones); both libraries run the very same tensors.

    .venv/bin/python benchmarks/kandinsky22_speed.py [--repeats 3] [--dtypes fp32,bf16] [--parts unet,movq]

It also loads a reference-saved ``variant="fp16"`` folder of the full-size MoVQ
with ``torch_dtype=torch.float16`` through sfumato (``--skip-fp16-load`` to skip).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

UNET_CONFIG = {
    "act_fn": "silu", "addition_embed_type": "image", "addition_embed_type_num_heads": 64,
    "attention_head_dim": 64, "block_out_channels": [384, 768, 1152, 1536], "center_input_sample": False,
    "class_embed_type": None, "class_embeddings_concat": False, "conv_in_kernel": 3, "conv_out_kernel": 3,
    "cross_attention_dim": 768, "cross_attention_norm": None,
    "down_block_types": ["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D",
                         "SimpleCrossAttnDownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "encoder_hid_dim": 1280,
    "encoder_hid_dim_type": "image_proj", "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
    "layers_per_block": 3, "mid_block_only_cross_attention": None, "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn", "norm_eps": 1e-05, "norm_num_groups": 32,
    "num_class_embeds": None, "only_cross_attention": False, "out_channels": 8,
    "projection_class_embeddings_input_dim": None, "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "scale_shift", "sample_size": 64, "time_cond_proj_dim": None,
    "time_embedding_act_fn": None, "time_embedding_dim": None, "time_embedding_type": "positional",
    "timestep_post_act": None,
    "up_block_types": ["SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D",
                       "ResnetUpsampleBlock2D"],
    "upcast_attention": False, "use_linear_projection": False,
}
MOVQ_CONFIG = {
    "act_fn": "silu", "block_out_channels": [128, 256, 256, 512],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "norm_type": "spatial",
    "num_vq_embeddings": 16384, "out_channels": 3, "sample_size": 32, "scaling_factor": 0.18215,
    "up_block_types": ["AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
    "vq_embed_dim": 4,
}
# kandinsky-community/kandinsky-2-2-prior's PriorTransformer (the other keys are the class's defaults)
PRIOR_CONFIG = {
    "num_attention_heads": 32, "attention_head_dim": 64, "num_layers": 20, "embedding_dim": 1280,
    "num_embeddings": 77, "additional_embeddings": 4, "dropout": 0.0,
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def pair(reference_class, ours_class, config, dtype):
    """The reference model with random weights, and ours sharing the very same tensors."""
    torch.manual_seed(0)
    reference = reference_class.from_config(config).to(dtype).eval()
    with torch.device("meta"):
        ours = ours_class.from_config(config)
    ours.load_weights(reference.state_dict(), source="reference model")
    return reference, ours.eval()


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def compare(name: str, reference_fn, ours_fn, repeats: int) -> float:
    with torch.inference_mode():
        reference_fn(), ours_fn()  # warm-up (allocator, kernels)
        ref_times, our_times = [], []
        for _ in range(repeats):  # interleaved, so drift in machine load hits both alike
            ref_times += timed(reference_fn, 1)
            our_times += timed(ours_fn, 1)
    ref, ours = statistics.median(ref_times), statistics.median(our_times)
    ratio = ours / ref
    print(f"{name:<28} reference {ref:8.3f} s   sfumato {ours:8.3f} s   ratio {ratio:5.3f}", flush=True)
    return ratio


def bench_unet(dtype, repeats):
    import diffusers

    import sfumato

    reference, ours = pair(diffusers.UNet2DConditionModel, sfumato.UNet2DConditionModel, UNET_CONFIG, dtype)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 64, 64, generator=generator).to(dtype)
    embeds = torch.randn(2, 1280, generator=generator).to(dtype)
    t = torch.tensor(500)

    def step(model):
        return lambda: model(sample, t, encoder_hidden_states=None, added_cond_kwargs={"image_embeds": embeds})

    with torch.inference_mode():
        diff = (step(reference)()[0].float() - step(ours)()[0].float()).abs().max().item()
    print(f"  unet max abs diff {diff:.2e}")
    return compare(f"unet step 512px b2 {dtype_name(dtype)}", step(reference), step(ours), repeats)


def bench_movq(dtype, repeats):
    import diffusers

    import sfumato

    reference, ours = pair(diffusers.VQModel, sfumato.VQModel, MOVQ_CONFIG, dtype)
    latents = torch.randn(2, 4, 64, 64, generator=torch.Generator().manual_seed(0)).to(dtype)

    def decode(model):
        return lambda: model.decode(latents, force_not_quantize=True).sample

    with torch.inference_mode():
        diff = (decode(reference)().float() - decode(ours)().float()).abs().max().item()
    print(f"  movq max abs diff {diff:.2e}")
    return compare(f"movq decode 512px b2 {dtype_name(dtype)}", decode(reference), decode(ours), repeats)


def check_fp16_variant_load():
    import diffusers

    import sfumato

    torch.manual_seed(0)
    model = diffusers.VQModel.from_config(MOVQ_CONFIG).to(torch.float16)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, variant="fp16")
        loaded = sfumato.VQModel.from_pretrained(folder, variant="fp16", torch_dtype=torch.float16)
    same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    print(f"full-size MoVQ fp16 variant saved by the reference loads in sfumato: {same} (dtype {loaded.dtype})")


def dtype_name(dtype):
    return {v: k for k, v in DTYPES.items()}[dtype]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--parts", default="unet,movq")
    parser.add_argument("--skip-fp16-load", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    ratios = {}
    for name in args.dtypes.split(","):
        dtype = DTYPES[name]
        if "movq" in args.parts:
            ratios[f"movq {name}"] = bench_movq(dtype, args.repeats)
        if "unet" in args.parts:
            ratios[f"unet {name}"] = bench_unet(dtype, args.repeats)
    if not args.skip_fp16_load:
        check_fp16_variant_load()
    worst = max(ratios.values())
    print(f"worst ratio {worst:.3f} (target <= 1.05): {'OK' if worst <= 1.05 else 'SLOWER'}")


if __name__ == "__main__":
    main()
