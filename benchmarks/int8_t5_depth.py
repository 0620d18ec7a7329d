"""Why the int8 text encoder's similarity to bf16 is low on the random full-size checkpoint, and what it is
when the attention is at a trained model's scale.

T5 does not scale its attention logits by 1/sqrt(d_kv); with random weights (std 1/sqrt(fan_in)) the logits of
Flan-UL2's shape have a standard deviation near 16, so every softmax is almost one-hot and a 1-2% weight error
flips which token a head attends to, more with every layer. Trained weights keep logits in a sensible range.
This builds a T5 encoder of Flan-UL2's width with LAYERS layers and the memory benchmark's random weights, loads
it in bf16 and through ``load_int8``, and prints the cosine similarity of their outputs for one prompt, with the
random query weights as they are and scaled by 1/sqrt(d_kv) (``--trained-scale``).

    .venv/bin/python benchmarks/int8_t5_depth.py 8               # saturated attention
    .venv/bin/python benchmarks/int8_t5_depth.py 8 --trained-scale
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import T5Config, T5EncoderModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.kandinsky3_memory import T5_CONFIG, _random_tensor  # noqa: E402
from sfumato.pipelines.kandinsky3.quantize import load_int8, quantize_linears  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("layers", type=int)
    parser.add_argument("--width", type=int, default=T5_CONFIG["d_model"])
    parser.add_argument("--trained-scale", action="store_true", help="query weights / sqrt(d_kv)")
    args = parser.parse_args()
    values = dict(T5_CONFIG, num_layers=args.layers)
    if args.width != T5_CONFIG["d_model"]:
        values.update(d_model=args.width, d_kv=args.width // values["num_heads"], d_ff=4 * args.width)
    config = T5Config(**values)
    with torch.device("meta"):
        skeleton = T5EncoderModel(config)
    make = _random_tensor(torch.Generator().manual_seed(0))
    state = {name: make(name, tuple(t.shape)).to(torch.bfloat16).contiguous()
             for name, t in skeleton.state_dict().items()}
    if args.trained_scale:
        state = {name: (t.float() / config.d_kv ** 0.5).bfloat16() if name.endswith("SelfAttention.q.weight") else t
                 for name, t in state.items()}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        save_file(state, path)
        with torch.device("meta"):
            reference = T5EncoderModel(config)
        reference.load_state_dict(state, assign=True)  # the tensors themselves: no second copy
        reference.tie_weights()
        reference.eval()
        del state
        with torch.device("meta"):
            quantized = quantize_linears(T5EncoderModel(config))
        quantized = load_int8(quantized, [path], torch.bfloat16).eval()
    ids = torch.tensor([[3, 9, 1, 20, 30, 40, 1]])
    with torch.no_grad():
        a = reference(input_ids=ids).last_hidden_state.float()
        b = quantized(input_ids=ids).last_hidden_state.float()
    cosine = float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))
    print(f"layers {args.layers}, width {config.d_model}, {'trained-scale' if args.trained_scale else 'random'} "
          f"attention: int8 vs bf16 output cosine {cosine:.5f}")


if __name__ == "__main__":
    main()
