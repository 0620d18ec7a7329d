"""Kandinsky 3 memory modes: sequential loading (one large model in memory at a time), int8 text encoder,
and weights read in the wanted dtype without a second copy. Full-size figures: benchmarks/kandinsky3_memory.py."""

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import sfumato
from sfumato.checkpoint.weights import read_state_dict
from sfumato.pipelines.kandinsky3.quantize import Int8Linear, quantize_linears

from ..parity import assert_close, generator, picture

LARGE = ("text_encoder", "unet", "movq")


def load(folder, name="Kandinsky3Pipeline", **kwargs):
    pipe = getattr(sfumato, name).from_pretrained(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def resident(pipe) -> list[str]:
    return [name for name in LARGE if not any(p.is_meta for p in getattr(pipe, name).parameters())]


def common(**kwargs):
    return dict(dict(height=64, width=64, num_inference_steps=2, output_type="np"), **kwargs)


@pytest.fixture(scope="module")
def expected(k3_folder):
    return load(k3_folder("small"))(prompt="a red cat", negative_prompt="blurry", generator=generator(),
                                    **common()).images


def record_residents(pipe) -> list:
    """(model about to run, models in memory at that moment), for every model call."""
    seen = []
    for name in LARGE:
        module = getattr(pipe, name)
        module.register_forward_pre_hook(lambda mod, args, name=name: seen.append((name, resident(pipe))))
        for method in ("encode", "decode"):
            if hasattr(module, method):
                original = getattr(module, method)

                def wrapped(*args, _original=original, _name=f"{name}.{method}", **kwargs):
                    out = _original(*args, **kwargs)
                    seen.append((_name, resident(pipe)))
                    return out

                setattr(module, method, wrapped)
    return seen


def test_sequential_loading_reads_nothing_large_at_load_and_one_model_at_a_time(k3_folder, expected):
    pipe = load(k3_folder("small"), sequential_loading=True)
    assert resident(pipe) == []
    assert pipe.device == torch.device("cpu") and pipe.unet.dtype == torch.float32
    seen = record_residents(pipe)
    got = pipe(prompt="a red cat", negative_prompt="blurry", generator=generator(), **common()).images
    assert_close(got, expected)
    assert [names for _, names in seen] == [[model.split(".")[0]] for model, _ in seen]  # only the running one
    assert [model for model, _ in seen][:3] == ["text_encoder", "text_encoder", "unet"]
    assert seen[-1] == ("movq.decode", ["movq"])
    assert resident(pipe) == []  # dropped after the call
    # a second call reads them again and gives the same picture
    assert_close(pipe(prompt="a red cat", negative_prompt="blurry", generator=generator(), **common()).images,
                 expected)


def test_enable_and_disable_on_a_loaded_pipeline(k3_folder, expected):
    pipe = load(k3_folder("small"))
    pipe.enable_sequential_loading()
    assert resident(pipe) == []
    assert_close(pipe(prompt="a red cat", negative_prompt="blurry", generator=generator(), **common()).images,
                 expected)
    pipe.disable_sequential_loading()
    assert resident(pipe) == list(LARGE)
    assert_close(pipe(prompt="a red cat", negative_prompt="blurry", generator=generator(), **common()).images,
                 expected)
    assert resident(pipe) == list(LARGE)  # loaded for good


def test_img2img_from_pipe_shares_the_loader(k3_folder):
    plain = sfumato.Kandinsky3Img2ImgPipeline.from_pipe(load(k3_folder("small")))
    kwargs = dict(prompt="a cat", image=picture(64, 64, 1), strength=0.6, num_inference_steps=3, output_type="np")
    expected = plain(**kwargs, generator=generator()).images
    text2img = sfumato.AutoPipelineForText2Image.from_pretrained(k3_folder("small"), sequential_loading=True)
    pipe = sfumato.AutoPipelineForImage2Image.from_pipe(text2img)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe) is sfumato.Kandinsky3Img2ImgPipeline and pipe.unet is text2img.unet
    seen = record_residents(pipe)
    assert_close(pipe(**kwargs, generator=generator()).images, expected)
    order = [model for model, _ in seen]
    assert order[0] == "text_encoder" and order[-1] == "movq.decode" and "movq.encode" in order
    assert all(names == [model.split(".")[0]] for model, names in seen)
    assert resident(pipe) == []


def test_models_given_as_objects_stay_as_they_are(k3_folder):
    unet = sfumato.Kandinsky3UNet.from_pretrained(Path(k3_folder("small")) / "unet")
    pipe = load(k3_folder("small"), unet=unet, sequential_loading=True)
    assert pipe.unet is unet and resident(pipe) == ["unet"]
    pipe(prompt="a cat", generator=generator(), **common())
    assert resident(pipe) == ["unet"]


def test_what_sequential_loading_refuses(k3_folder):
    pipe = load(k3_folder("small"), sequential_loading=True)
    with pytest.raises(ValueError, match="disable_sequential_loading"):
        pipe.to("cpu")
    with pytest.raises(ValueError, match="disable_sequential_loading"):
        pipe.enable_model_cpu_offload()
    with pytest.raises(ValueError, match="not in memory to save"):
        pipe.save_pretrained("/nonexistent/never-written")
    with pytest.raises(ValueError, match="sequential_loading must be True or False"):
        load(k3_folder("small"), sequential_loading="yes")
    built = sfumato.Kandinsky3Pipeline(**load(k3_folder("small")).components)
    with pytest.raises(ValueError, match="load it with from_pretrained"):
        built.enable_sequential_loading()


def test_int8_text_encoder(k3_folder):
    pipe = load(k3_folder("small"), torch_dtype=torch.bfloat16)
    prompts = ["a red cat", "an old house in the dark forest at night", "the sea"]
    reference = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, _cut_context=True)[0].float()
    pipe.quantize_text_encoder("int8")
    assert not any(isinstance(m, torch.nn.Linear) for m in pipe.text_encoder.modules())
    got = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, _cut_context=True)[0].float()
    similarity = torch.nn.functional.cosine_similarity(reference.flatten(1), got.flatten(1))
    assert float(similarity.min()) > 0.99
    out = pipe(prompt="a cat", generator=generator(), **common()).images
    assert np.isfinite(out).all()
    with pytest.raises(ValueError, match="kind='int8'"):
        pipe.quantize_text_encoder("int4")


def test_int8_text_encoder_with_sequential_loading(k3_folder):
    plain = load(k3_folder("small"))
    plain.quantize_text_encoder()
    expected = plain(prompt="a cat", generator=generator(), **common()).images
    pipe = load(k3_folder("small"), sequential_loading=True)
    pipe.quantize_text_encoder()
    assert resident(pipe) == []
    assert_close(pipe(prompt="a cat", generator=generator(), **common()).images, expected)
    assert isinstance(pipe.text_encoder.encoder.block[0].layer[0].SelfAttention.q, Int8Linear)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_int8_linear_is_the_dequantized_linear(dtype):
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48).to(dtype)
    quantized = Int8Linear.from_linear(linear)
    dequantized = quantized.weight.float() * quantized.scale[:, None]
    assert (dequantized - linear.weight.float()).abs().max() <= quantized.scale.max() / 2 + 1e-6
    x = torch.randn(3, 5, 64).to(dtype)
    expected = torch.nn.functional.linear(x.float(), dequantized, linear.bias.float())
    assert (quantized(x).float() - expected).abs().max() < (0.05 if dtype != torch.float32 else 1e-4)
    model = quantize_linears(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)))
    assert [type(m).__name__ for m in model] == ["Int8Linear", "ReLU", "Int8Linear"]


def test_weights_read_in_the_wanted_dtype(tmp_path):
    """A file in the wanted dtype is mapped as it is; any other is converted tensor by tensor on reading."""
    tensors = {"w": torch.randn(4, 3), "h": torch.randn(5).half(), "i": torch.arange(6).reshape(2, 3),
               "flag": torch.tensor([True, False]), "empty": torch.zeros(0, 2), "scalar": torch.tensor(1.5)}
    save_file(tensors, tmp_path / "mixed.safetensors")
    for dtype in (torch.float32, torch.bfloat16, torch.float16, None):
        got = read_state_dict([tmp_path / "mixed.safetensors"], dtype=dtype)
        for name, tensor in tensors.items():
            want = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
            assert got[name].dtype == want.dtype and torch.equal(got[name], want), (name, dtype)
    save_file({"w": torch.randn(4, 3).bfloat16()}, tmp_path / "bf16.safetensors")
    mapped = read_state_dict([tmp_path / "bf16.safetensors"], dtype=torch.bfloat16)
    assert torch.equal(mapped["w"], load_file(tmp_path / "bf16.safetensors")["w"])
    (tmp_path / "bad.safetensors").write_bytes((tmp_path / "mixed.safetensors").read_bytes()[:-7])
    with pytest.raises(sfumato.CheckpointError, match="truncated or corrupt"):
        read_state_dict([tmp_path / "bad.safetensors"], dtype=torch.bfloat16)


def test_int8_loading_of_tied_tensors(tmp_path):
    """A T5 checkpoint may store its tied embedding under both names: equal values load (the tie kept),
    different values are refused, one name alone is tied by the model."""
    from transformers import T5Config, T5EncoderModel

    from sfumato.pipelines.kandinsky3.quantize import load_int8

    config = T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=24, num_layers=1, num_heads=2)
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in T5EncoderModel(config).state_dict().items()}

    def skeleton():
        with torch.device("meta"):
            return quantize_linears(T5EncoderModel(config))

    state["shared.weight"] = state["encoder.embed_tokens.weight"].clone()
    save_file(state, tmp_path / "same.safetensors")
    model = load_int8(skeleton(), [tmp_path / "same.safetensors"], torch.float32)
    assert model.shared.weight is model.encoder.embed_tokens.weight
    assert torch.equal(model.shared.weight, state["shared.weight"])

    state["shared.weight"] = state["shared.weight"] + 1
    save_file(state, tmp_path / "different.safetensors")
    with pytest.raises(sfumato.CheckpointError, match="tied to another tensor"):
        load_int8(skeleton(), [tmp_path / "different.safetensors"], torch.float32)

    del state["shared.weight"]
    save_file(state, tmp_path / "one.safetensors")
    model = load_int8(skeleton(), [tmp_path / "one.safetensors"], torch.float32)
    assert torch.equal(model.shared.weight, state["encoder.embed_tokens.weight"])
    assert model.shared.weight is model.encoder.embed_tokens.weight
