"""The fast CPU mode: its choice per CPU (by what the CPU reports), and its pictures against the parity mode."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

import sfumato
from sfumato import fast
from sfumato.demo import builtin_model

# what the two kinds of CPU in issue 12 report
SAPPHIRE_RAPIDS_FLAGS = ("fpu sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile "
                         "amx_int8").split()
ZEN3_FLAGS = "fpu sse4_2 avx avx2 fma bmi2 sha_ni vaes vpclmulqdq".split()
ZEN4_FLAGS = "fpu avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16".split()


# --------------------------------------------------------------------------- the choice


def test_sapphire_rapids_gets_bf16_channels_last_and_compile():
    plan = fast.choose("AVX512", SAPPHIRE_RAPIDS_FLAGS)
    assert plan.dtype == torch.bfloat16
    assert plan.channels_last and plan.sdpa and plan.compile
    assert not plan.products_attention and "SDPA attention" in plan.describe()  # its fused kernel uses AMX there
    assert not plan.fast_convolutions  # AMX runs oneDNN's bf16 convolutions fast
    assert not plan.int8_convolutions  # not measured there


def test_zen3_gets_fp32_channels_last_never_bf16():
    plan = fast.choose("AVX2", ZEN3_FLAGS)
    assert plan.dtype == torch.float32
    assert plan.channels_last and plan.sdpa and plan.fast_convolutions
    assert not plan.compile and not plan.int8_convolutions  # no VNNI on Zen 3
    assert not plan.products_attention  # fp32: SDPA's fused kernel beats fp32 products
    assert "Winograd/GEMM" in plan.describe()


def test_avx512_bf16_with_vnni_without_amx_gets_bf16_and_int8_convolutions():
    plan = fast.choose("AVX512", ZEN4_FLAGS)
    assert plan.dtype == torch.bfloat16 and not plan.compile and not plan.fast_convolutions
    assert plan.int8_convolutions and plan.int8_linears and "int8 linear layers" in plan.describe()
    # SDPA's fused kernel has no bf16 fast path without AMX
    assert plan.products_attention and "attention as bf16 matrix products" in plan.describe()
    assert "SDPA attention" not in plan.describe()
    without_vnni = fast.choose("AVX512", [flag for flag in ZEN4_FLAGS if flag != "avx512_vnni"])
    assert without_vnni.dtype == torch.bfloat16 and not without_vnni.int8_convolutions


def test_amd_cpus_get_fp32_linear_layers_through_onednn():
    for capability, flags in (("AVX512", ZEN4_FLAGS), ("AVX2", ZEN3_FLAGS)):
        plan = fast.choose(capability, flags, "AuthenticAMD")
        assert plan.onednn_linears and "fp32 linear layers through oneDNN" in plan.describe()
        # only the packing differs from the plan without a vendor
        assert dataclasses.replace(plan, onednn_linears=False) == fast.choose(capability, flags)
        assert not fast.choose(capability, flags, "GenuineIntel").onednn_linears
    assert not fast.choose("AVX512", SAPPHIRE_RAPIDS_FLAGS, "GenuineIntel").onednn_linears
    assert not fast.choose("AVX512", ZEN4_FLAGS).onednn_linears  # vendor unknown


def test_every_plan_keeps_freed_memory():
    for capability, flags in (("AVX512", SAPPHIRE_RAPIDS_FLAGS), ("AVX2", ZEN3_FLAGS), ("AVX512", ZEN4_FLAGS)):
        assert fast.choose(capability, flags).keep_freed_memory


@pytest.mark.parametrize("capability", ["AVX512", "DEFAULT", "AVX2"])
def test_avx512_without_bf16_is_fp32(capability):
    plan = fast.choose(capability, ["avx512f", "avx512bw", "avx2"])
    assert plan.dtype == torch.float32
    assert plan.fast_convolutions == (capability == "AVX2")  # measured to pay there; oneDNN's elsewhere
    assert not plan.int8_convolutions


def test_choice_reads_the_capability_not_the_timing(monkeypatch):
    monkeypatch.setattr(fast, "cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(fast, "cpu_flags", lambda: frozenset(ZEN3_FLAGS))
    monkeypatch.setattr(fast, "cpu_vendor", lambda: "GenuineIntel")
    assert fast.plan_for_this_cpu() == fast.choose("AVX2", ZEN3_FLAGS)
    monkeypatch.setattr(fast, "cpu_flags", lambda: frozenset(SAPPHIRE_RAPIDS_FLAGS))
    assert fast.plan_for_this_cpu().dtype == torch.bfloat16
    monkeypatch.setattr(fast, "cpu_vendor", lambda: "AuthenticAMD")
    assert fast.plan_for_this_cpu() == fast.choose("AVX2", SAPPHIRE_RAPIDS_FLAGS, "AuthenticAMD")


def test_bf16_warning_only_without_native_bf16():
    assert "slow" in fast.bf16_warning("bf16", "AVX2", ZEN3_FLAGS)
    assert fast.bf16_warning(torch.bfloat16, "AVX2", ZEN3_FLAGS) is not None
    assert fast.bf16_warning("bf16", "AVX512", SAPPHIRE_RAPIDS_FLAGS) is None
    assert fast.bf16_warning("fp32", "AVX2", ZEN3_FLAGS) is None
    with pytest.warns(UserWarning, match="slow"):
        assert fast.warn_if_slow_dtype("bfloat16", "AVX2", ZEN3_FLAGS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not fast.warn_if_slow_dtype("bf16", "AVX512", SAPPHIRE_RAPIDS_FLAGS)


def test_this_cpu_is_described():
    assert isinstance(fast.cpu_capability(), str) and fast.cpu_model()
    assert fast.plan_for_this_cpu().describe()


# --------------------------------------------------------------------------- pictures


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


@pytest.fixture(scope="module")
def pipe():
    pipe = sfumato.AutoPipelineForText2Image.from_pretrained(builtin_model("decoder"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def picture(pipe, seed: int = 1) -> np.ndarray:
    return pipe("a red circle on a blue background", height=64, width=64, num_inference_steps=12,
                prior_num_inference_steps=12, prior_guidance_scale=4.0, guidance_scale=1.0,
                generator=torch.Generator().manual_seed(seed), output_type="np").images


def weights(pipe) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": tensor.clone() for name, model in fast._fast_models(pipe)
            for key, tensor in model.state_dict().items()}


FP32_PLAN = fast.choose("AVX2", ZEN3_FLAGS)
# the Sapphire Rapids plan without compilation (bf16 is emulated here, slow but fine for a tiny model)
BF16_PLAN = fast.Plan(dtype=torch.bfloat16, channels_last=True, compile=False)


@pytest.mark.parametrize("plan", [FP32_PLAN, BF16_PLAN], ids=["fp32-channels_last", "bf16"])
def test_fast_mode_pictures_close_to_parity_and_round_trip(pipe, plan):
    before_weights = weights(pipe)
    parity = picture(pipe)
    assert fast.current_plan(pipe) is None

    assert sfumato.optimize(pipe, plan) is pipe
    assert fast.current_plan(pipe) == plan
    # the models keep the fp32 interface: the scheduler's latents and the decoded image stay fp32
    assert pipe.decoder_pipe.unet.dtype == torch.float32 and pipe.decoder_pipe.movq.dtype == torch.float32
    assert next(pipe.decoder_pipe.unet.parameters()).dtype == plan.dtype
    assert next(pipe.decoder_pipe.movq.parameters()).dtype == plan.dtype
    # the prior's embedding steers the whole picture: it stays fp32 on every plan
    assert next(pipe.prior_pipe.prior.parameters()).dtype == torch.float32
    quick = picture(pipe)
    assert quick.dtype == parity.dtype and quick.shape == parity.shape
    assert psnr(parity, quick) >= 30.0

    fast.disable(pipe)
    assert fast.current_plan(pipe) is None
    after = weights(pipe)
    assert all(torch.equal(before_weights[key], after[key]) for key in before_weights)
    assert all(p.is_contiguous() for _, m in fast._fast_models(pipe) for p in m.parameters())
    np.testing.assert_array_equal(picture(pipe), parity)  # parity mode exactly as before


def test_fast_convolutions_keep_the_picture_and_undo_exactly(pipe, monkeypatch):
    """The built-in model's convolutions are below the size thresholds; with them lowered, every 3x3
    convolution of the UNet and the MoVQ runs through Winograd's transforms."""
    from sfumato.nn import fast_conv

    monkeypatch.setattr(fast_conv, "MIN_MULTIPLICATIONS", 0)
    monkeypatch.setattr(fast_conv, "MIN_WINOGRAD_PIXELS", 0)
    monkeypatch.setattr(fast_conv, "MAX_GEMM_PIXELS", -1)
    parity = picture(pipe)
    before_weights = weights(pipe)
    sfumato.optimize(pipe, FP32_PLAN)
    converted = [m for _, model in fast._fast_models(pipe) for m in model.modules()
                 if isinstance(m, fast_conv.FastConv2d)]
    assert len(converted) > 10
    calls = []
    monkeypatch.setattr(fast_conv, "winograd_conv3x3",
                        lambda *args, real=fast_conv.winograd_conv3x3: calls.append(1) or real(*args))
    quick = picture(pipe)
    assert calls and psnr(parity, quick) >= 30.0
    fast.disable(pipe)
    assert not any(isinstance(m, fast_conv.FastConv2d) for _, model in fast._fast_models(pipe)
                   for m in model.modules())
    after = weights(pipe)
    assert all(torch.equal(before_weights[key], after[key]) for key in before_weights)
    np.testing.assert_array_equal(picture(pipe), parity)


INT8_PLAN = fast.Plan(dtype=torch.bfloat16, channels_last=True, compile=False, int8_convolutions=True,
                      int8_linears=True)


def test_int8_convolutions_keep_the_picture_and_undo_exactly(pipe, monkeypatch):
    """The built-in model's convolutions are below the size threshold; with it lowered, every convolution
    of 32+ channels each way in the UNet and the MoVQ runs in int8."""
    from sfumato.nn import int8_conv

    if not int8_conv.available():
        pytest.skip("no oneDNN int8 convolution in this build")
    from sfumato.nn import int8_linear

    monkeypatch.setattr(int8_conv, "MIN_MULTIPLICATIONS", 0)
    monkeypatch.setattr(int8_linear, "MIN_MULTIPLICATIONS", 0)
    parity = picture(pipe)
    before_weights = weights(pipe)
    bf16 = fast.Plan(dtype=torch.bfloat16, channels_last=True, compile=False)
    sfumato.optimize(pipe, bf16)
    without_int8 = picture(pipe)
    fast.disable(pipe)
    sfumato.optimize(pipe, INT8_PLAN)
    converted = [m for _, model in fast._fast_models(pipe) for m in model.modules()
                 if isinstance(m, int8_conv.Int8Conv2d)]
    assert len(converted) > 40
    linears = {name: [m for m in model.modules() if isinstance(m, int8_linear.Int8Linear)]
               for name, model in fast._fast_models(pipe)}
    assert linears["unet"] and not linears["prior_prior"]  # the prior stays fp32, without int8
    calls = []
    monkeypatch.setattr(torch.ops.onednn, "qconv2d_pointwise",
                        lambda *args, real=torch.ops.onednn.qconv2d_pointwise: calls.append(1) or real(*args))
    # small maps' convolutions run as one int8 GEMM of their unfolded input
    monkeypatch.setattr(int8_conv, "unfold", lambda *args, real=int8_conv.unfold: calls.append(1) or real(*args))
    quick = picture(pipe)
    assert len(calls) > 20 * 12  # the UNet's int8 convolutions ran at every step, and the MoVQ's
    assert psnr(parity, quick) >= 30.0 and not np.array_equal(quick, without_int8)
    fast.disable(pipe)
    assert not any(isinstance(m, int8_conv.Int8Conv2d) for _, model in fast._fast_models(pipe)
                   for m in model.modules())
    after = weights(pipe)
    assert all(torch.equal(before_weights[key], after[key]) for key in before_weights)
    np.testing.assert_array_equal(picture(pipe), parity)


def attention_layers(pipe) -> dict[str, list]:
    return {name: [m for m in model.modules() if hasattr(type(m), "products_attention")]
            for name, model in fast._fast_models(pipe)}


def test_attention_as_bf16_products_keeps_the_picture_and_undoes_exactly(pipe, monkeypatch):
    from sfumato.nn import attention

    parity = picture(pipe)
    plan = fast.Plan(dtype=torch.bfloat16, channels_last=True, compile=False, products_attention=True)
    sfumato.optimize(pipe, plan)
    layers = attention_layers(pipe)
    assert layers["unet"] and layers["movq"]  # the UNet's Attention and the MoVQ's SpatialSelfAttention
    assert all(layer.products_attention for name in ("unet", "movq") for layer in layers[name])
    assert not any(layer.products_attention for layer in layers["prior_prior"])  # the prior stays fp32
    calls = []
    monkeypatch.setattr(attention, "products_attention",
                        lambda *args, real=attention.products_attention: calls.append(1) or real(*args))
    quick = picture(pipe)
    assert len(calls) >= 12  # at every UNet step
    assert psnr(parity, quick) >= 30.0
    fast.disable(pipe)
    assert not any(layer.products_attention for found in attention_layers(pipe).values() for layer in found)
    assert all("products_attention" not in layer.__dict__ for found in attention_layers(pipe).values()
               for layer in found)
    np.testing.assert_array_equal(picture(pipe), parity)


def test_int8_pictures_made_in_a_batch_equal_those_made_alone(pipe, monkeypatch):
    """The int8 layers quantize each picture's rows on their own (nn.batching): a prompt's picture does not depend
    on the prompts beside it. Quantized over the whole batch instead, it did (35-40 dB from the picture alone)."""
    from sfumato.nn import batching, int8_conv, int8_linear

    if not int8_conv.available():
        pytest.skip("no oneDNN int8 convolution in this build")
    monkeypatch.setattr(int8_conv, "MIN_MULTIPLICATIONS", 0)
    monkeypatch.setattr(int8_linear, "MIN_MULTIPLICATIONS", 0)
    prompts = ["a red circle on a blue background", "a green square on a white background"]

    def make(chosen, seeds):  # decoder guidance 4: the UNet's batch is two stacked copies
        return pipe(chosen, height=64, width=64, num_inference_steps=6, prior_num_inference_steps=6,
                    guidance_scale=4.0, generator=[torch.Generator().manual_seed(s) for s in seeds],
                    output_type="np").images

    sfumato.optimize(pipe, INT8_PLAN)
    try:
        alone = [make([prompt], [seed])[0] for seed, prompt in enumerate(prompts)]
        together = make(prompts, [0, 1])
        monkeypatch.setattr(batching, "picture_count", lambda rows: 1)
        whole = make(prompts, [0, 1])
    finally:
        fast.disable(pipe)
    # the int8 layers run the same calls as alone; the layers that stay bf16 run the whole batch, which oneDNN
    # may sum in another order on another CPU (bit for bit equal on the Zen 4 where this was written)
    grouped = max(float(np.abs(single - in_batch).max()) for single, in_batch in zip(alone, together))
    ungrouped = max(float(np.abs(single - in_batch).max()) for single, in_batch in zip(alone, whole))
    assert grouped <= 1e-3 and ungrouped > 10 * max(grouped, 1e-3)


def _mapped_from(path, tensors) -> bool:
    """Whether every tensor's memory lies in a mapping of the file at ``path`` (Linux)."""
    with open("/proc/self/maps") as maps:
        ranges = [tuple(int(n, 16) for n in line.split()[0].split("-")) for line in maps
                  if line.rstrip().endswith(str(path.resolve()))]
    return bool(ranges) and all(any(low <= t.data_ptr() < high for low, high in ranges) for t in tensors)


@pytest.mark.parametrize("plan, kept_files", [(INT8_PLAN, 2), (BF16_PLAN, 2), (FP32_PLAN, 0)],
                         ids=["int8", "bf16", "fp32"])
def test_kept_fast_weights_make_the_same_pictures_without_converting_again(plan, kept_files, tmp_path, monkeypatch):
    """The fast mode's cast and quantized weights are made once per machine and kept (checkpoint.derived): a
    later process maps them instead of converting, and makes the same pictures bit for bit. fp32 plans cast
    and quantize nothing, so they keep nothing."""
    from sfumato.nn import int8_conv, int8_linear

    if plan.int8_convolutions and not int8_conv.available():
        pytest.skip("no oneDNN int8 convolution in this build")
    monkeypatch.setattr(int8_conv, "MIN_MULTIPLICATIONS", 0)
    monkeypatch.setattr(int8_linear, "MIN_MULTIPLICATIONS", 0)

    def load():
        loaded = sfumato.AutoPipelineForText2Image.from_pretrained(builtin_model("decoder"))
        loaded.set_progress_bar_config(disable=True)
        return sfumato.optimize(loaded, plan)

    monkeypatch.setenv("SFUMATO_CACHE_DIR", "off")
    plain = load()
    expected = picture(plain)
    fast.disable(plain)
    fp32 = weights(plain)
    monkeypatch.setenv("SFUMATO_CACHE_DIR", str(tmp_path))
    np.testing.assert_array_equal(picture(load()), expected)  # converted and written
    kept = sorted((tmp_path / "weights").glob("*.safetensors"))
    assert len(kept) == kept_files  # the UNet's and the MoVQ's; the prior stays fp32 in every plan

    def refuse(*args, **kwargs):
        raise AssertionError("converted again")

    for module in (int8_conv, int8_linear):
        monkeypatch.setattr(module, "quantize_weight", refuse, raising=False)
    monkeypatch.setattr(int8_conv, "weight_scale", refuse)
    again = load()  # a new process: the kept weights are mapped, nothing is cast or quantized
    if kept_files:
        unet = again.decoder_pipe.unet
        assert any(_mapped_from(path, [p.data for p in unet.parameters()]) for path in kept)
        assert all(p.dtype == plan.dtype for p in unet.parameters())
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in unet.parameters() if p.ndim == 4)
    np.testing.assert_array_equal(picture(again), expected)
    fast.disable(again)
    after = weights(again)
    assert all(torch.equal(fp32[key], after[key]) for key in fp32)


@pytest.mark.parametrize("plan", [dataclasses.replace(FP32_PLAN, onednn_linears=True),
                                  dataclasses.replace(INT8_PLAN, onednn_linears=True)], ids=["fp32", "int8"])
def test_onednn_linear_layers_keep_the_picture_and_undo_exactly(pipe, plan, monkeypatch):
    """Every fp32 linear layer runs oneDNN's product: all of them in an fp32 plan, the prior's (an fp32 part) and
    the text and image encoders' in a bf16 one; the encoders get nothing else."""
    from sfumato.nn import onednn_linear

    if not onednn_linear.available():
        pytest.skip("no oneDNN linear layer in this build")
    monkeypatch.setattr(onednn_linear, "MIN_MULTIPLICATIONS", 0)
    parity = picture(pipe)
    before_weights = weights(pipe)
    encoders = [model for name, model in fast._fast_models(pipe, encoders=True) if "encoder" in name]
    assert len(encoders) == 2
    sfumato.optimize(pipe, plan)
    swapped = {name: [m for m in model.modules() if isinstance(m, onednn_linear.OnednnLinear)]
               for name, model in fast._fast_models(pipe, encoders=True)}
    assert len(swapped["prior_prior"]) > 10
    assert swapped["prior_text_encoder"] and swapped["prior_image_encoder"]
    assert bool(swapped["unet"]) == (plan.dtype == torch.float32)
    for encoder in encoders:  # fp32 weights, same class, plain calls
        assert next(encoder.parameters()).dtype == torch.float32 and "forward" not in encoder.__dict__
        assert not isinstance(encoder, fast._Fp32Interface)
    calls = []
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise",
                        lambda *args, real=torch.ops.mkldnn._linear_pointwise: calls.append(1) or real(*args))
    quick = picture(pipe)
    assert len(calls) > 10 * 12  # the prior's layers at every step
    assert psnr(parity, quick) >= (40.0 if plan.dtype == torch.float32 else 30.0)
    fast.disable(pipe)
    assert not any(isinstance(m, onednn_linear.OnednnLinear) for _, model in fast._fast_models(pipe, encoders=True)
                   for m in model.modules())
    assert all(not hasattr(encoder, "_sfumato_fast_undo") for encoder in encoders)
    after = weights(pipe)
    assert all(torch.equal(before_weights[key], after[key]) for key in before_weights)
    np.testing.assert_array_equal(picture(pipe), parity)


def test_encoders_untouched_by_plans_without_onednn_linear_layers(pipe):
    sfumato.optimize(pipe, FP32_PLAN)
    try:
        for name, model in fast._fast_models(pipe, encoders=True):
            assert hasattr(model, "_sfumato_fast_undo") == ("encoder" not in name)
    finally:
        fast.disable(pipe)


def test_component_kinds():
    kinds = {name: fast._component_kind(name) for name in (
        "unet", "decoder_unet", "decoder_pipe.unet", "prior_prior", "prior_pipe.prior", "prior_text_encoder",
        "text_encoder_2", "image_encoder", "prior_image_encoder", "tokenizer", "scheduler", "movq")}
    assert kinds == {"unet": "unet", "decoder_unet": "unet", "decoder_pipe.unet": "unet", "prior_prior": "prior",
                     "prior_pipe.prior": "prior", "prior_text_encoder": "text_encoder",
                     "text_encoder_2": "text_encoder_2", "image_encoder": "image_encoder",
                     "prior_image_encoder": "image_encoder", "tokenizer": None, "scheduler": None, "movq": "movq"}
    encoder = fast.plan_for_part(INT8_PLAN, "prior_image_encoder")
    assert encoder.dtype == torch.float32 and not encoder.channels_last and not encoder.int8_linears


def test_fp32_parts_get_the_plan_in_fp32_without_int8():
    for name in ("prior", "prior_prior"):  # a pipeline's prior, and a combined pipeline's
        part = fast.plan_for_part(INT8_PLAN, name)
        assert part.dtype == torch.float32 and not part.int8_convolutions and not part.int8_linears
        assert not part.products_attention
        assert part.channels_last and part.sdpa and part.keep_freed_memory
    assert fast.plan_for_part(INT8_PLAN, "unet") is INT8_PLAN
    assert fast.plan_for_part(INT8_PLAN, "movq") is INT8_PLAN


def test_fast_mode_keeps_freed_memory_when_its_plan_says_so(monkeypatch):
    from sfumato import allocator

    calls = []
    monkeypatch.setattr(fast, "keep_freed_memory", lambda: calls.append(1) or True)
    model = sfumato.VQModel(block_out_channels=(32,), latent_channels=4, norm_num_groups=8)
    sfumato.optimize(model, fast.Plan(keep_freed_memory=False))
    fast.disable(model)
    assert calls == []
    sfumato.optimize(model, FP32_PLAN)
    fast.disable(model)
    assert calls == [1]
    assert fast.keep_freed_memory is not allocator.keep_freed_memory  # the patch took


def test_parity_mode_untouched_unless_enabled(pipe):
    models = fast._fast_models(pipe)
    assert {name.rsplit("_", 1)[-1] for name, _ in models} == {"unet", "movq", "prior"}
    for _, model in models:
        assert "forward" not in model.__dict__ and "decode" not in model.__dict__
        assert not hasattr(model, "_sfumato_fast_undo")
        assert type(model).__name__ == type(model).__mro__[0].__name__
        assert not isinstance(model, fast._Fp32Interface)


def test_enable_fast_cpu_delegates_and_is_idempotent(pipe):
    try:
        assert pipe.enable_fast_cpu() is pipe
        plan = fast.current_plan(pipe)
        assert plan == fast.plan_for_this_cpu()
        pipe.enable_fast_cpu()  # a second call changes nothing
        unet = pipe.decoder_pipe.unet
        assert unet.forward.__wrapped__.__self__ is unet
    finally:
        fast.disable(pipe)
    assert "forward" not in pipe.decoder_pipe.unet.__dict__


def test_optimize_one_model_and_bad_input():
    model = sfumato.VQModel(block_out_channels=(32,), latent_channels=4, norm_num_groups=8, norm_type="spatial")
    latents = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        expected = model.decode(latents, force_not_quantize=True).sample
        sfumato.optimize(model, FP32_PLAN)
        got = model.decode(latents, force_not_quantize=True).sample
    assert got.is_contiguous() and torch.allclose(got, expected, atol=1e-5)
    fast.disable(model)
    with pytest.raises(TypeError, match="optimize"):
        sfumato.optimize(object(), FP32_PLAN)


def test_model_in_another_dtype_keeps_it_and_timesteps_stay_exact(monkeypatch):
    monkeypatch.setattr(fast, "cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(fast, "cpu_flags", lambda: frozenset(ZEN3_FLAGS))
    model = sfumato.VQModel(block_out_channels=(32,), latent_channels=4, norm_num_groups=8).to(torch.bfloat16)
    with pytest.warns(UserWarning, match="slow"):  # a bf16 model on a CPU without native bf16
        sfumato.optimize(model, FP32_PLAN)
    assert model.dtype == torch.bfloat16
    out = model.decode(torch.randn(1, 4, 8, 8, dtype=torch.bfloat16), force_not_quantize=True).sample
    assert out.dtype == torch.bfloat16 and out.is_contiguous()
    fast.disable(model)
    assert model.dtype == torch.bfloat16

    seen = []
    wrapped = fast._wrap(torch.nn.Identity(), lambda sample, t: seen.append((sample.dtype, t.dtype)) or sample,
                         torch.bfloat16, channels_last=False)
    out = wrapped(torch.randn(1, 4, 2, 2), torch.tensor(999.0))
    assert seen == [(torch.bfloat16, torch.float32)] and out.dtype == torch.float32


@pytest.mark.parametrize("batch", [1, 2])
def test_conv_weights_follow_input_layout_without_changing_numbers(batch):
    """The parity mode keeps conv weights in their input's layout (no per-call copy): same bits."""
    torch.manual_seed(0)
    model = sfumato.VQModel(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"), latent_channels=4,
                            norm_num_groups=8, norm_type="spatial").eval()
    latents = torch.randn(batch, 4, 8, 8)
    with torch.inference_mode():
        followed = model.decode(latents, force_not_quantize=True).sample
        assert any(not m.weight.is_contiguous() for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module._forward_pre_hooks.clear()
                module.weight.data = module.weight.data.contiguous()
        plain = model.decode(latents, force_not_quantize=True).sample
    assert torch.equal(followed, plain)
