#!/usr/bin/env bash
# Make the pictures the README's tour shows, with the built-in model (run after scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/images
mkdir -p "$out"
sf() { .venv/bin/sfumato "$@" --quiet; }

# inputs: a mask (white = repaint: the upper-left quarter) and a silhouette hint from the data set
.venv/bin/python - "$out" <<'PY'
import sys
from PIL import Image, ImageDraw
from sfumato.demo.data import make_sample
out = sys.argv[1]
mask = Image.new("L", (64, 64), 0)
ImageDraw.Draw(mask).rectangle((0, 0, 31, 31), fill=255)
mask.save(f"{out}/mask.png")
make_sample(3, shape="triangle").hint.save(f"{out}/silhouette.png")
PY

sf generate "a red circle on a blue background" --seed 1 -o "$out/generate.png"
sf generate "a green square on a black background" --num 4 --seed 7 -o "$out/squares.png"
sf img2img "$out/generate.png" "a yellow circle on a blue background" --strength 0.6 --seed 2 -o "$out/img2img.png"
sf inpaint "$out/generate.png" "$out/mask.png" "a white triangle on a blue background" --seed 3 -o "$out/inpaint.png"
sf interpolate "a red circle on a blue background" "a green square on a blue background" --weights 0.5 0.5 \
    --seed 4 -o "$out/interpolate.png"
sf controlnet "$out/silhouette.png" "a yellow triangle on a black background" --seed 5 -o "$out/controlnet.png"
sf chain examples/chain.yaml -o "$out/chain.png"
.venv/bin/sfumato info "$out/generate.png" > "$out/generate-info.txt"
echo "pictures in $out"
