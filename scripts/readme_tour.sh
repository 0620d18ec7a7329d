#!/usr/bin/env bash
# Make the pictures the README's tour shows, with the built-in model (run after scripts/setup.sh).
# The commands are the README's, writing into docs/images/ instead of the current folder.
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/images
mkdir -p "$out"
sf() { .venv/bin/sfumato "$@" --quiet; }

sf generate "a red circle on a blue background" --seed 1 -o "$out/generate.png"

# inputs: a mask (white = repaint) over the circle's box with a 4-pixel margin, and a silhouette hint
.venv/bin/python - "$out" <<'PY'
import sys
import numpy as np
from PIL import Image
from sfumato.demo.data import make_sample
out = sys.argv[1]
picture = np.asarray(Image.open(f"{out}/generate.png").convert("RGB")).astype(int)
red = (picture[..., 0] > 128) & (picture[..., 2] < 128)
ys, xs = np.nonzero(red)
mask = np.zeros(red.shape, np.uint8)
mask[max(ys.min() - 4, 0):ys.max() + 5, max(xs.min() - 4, 0):xs.max() + 5] = 255
Image.fromarray(mask).save(f"{out}/mask.png")
make_sample(3, shape="triangle").hint.save(f"{out}/silhouette.png")
PY

sf generate "a green square on a black background" --num 4 --seed 7 -o "$out/squares.png"
sf img2img "$out/generate.png" "a yellow circle on a blue background" --strength 0.6 --seed 2 -o "$out/img2img.png"
sf inpaint "$out/generate.png" "$out/mask.png" "a white triangle on a blue background" --seed 3 -o "$out/inpaint.png"
sf inpaint "$out/generate.png" "$out/mask.png" "a white triangle on a blue background" --seed 3 --no-keep-unmasked \
    -o "$out/inpaint-latent.png"
sf interpolate "a red circle on a blue background" "a green square on a blue background" --weights 0.5 0.5 \
    --seed 4 -o "$out/interpolate.png"
sf controlnet "$out/silhouette.png" "a yellow triangle on a black background" --seed 5 -o "$out/controlnet.png"
sf controlnet "$out/silhouette.png" "a yellow triangle on a blue background" --image "$out/generate.png" --strength 0.7 \
    --seed 6 -o "$out/controlnet-img2img.png"
sf chain examples/chain.yaml -o "$out/chain.png"
rm -f chain-step1.png  # the example chain also writes its first step where it runs
.venv/bin/sfumato info "$out/generate.png" > "$out/generate-info.txt"

# what the inpainting picture should show: the kept part unchanged, a white triangle inside the mask
.venv/bin/python - "$out" <<'PY'
import sys
import numpy as np
from PIL import Image
from sfumato.demo.evaluate import predict
out = sys.argv[1]
kept = np.asarray(Image.open(f"{out}/mask.png")) < 128
before = np.asarray(Image.open(f"{out}/generate.png").convert("RGB")).astype(int)
for name in ("inpaint", "inpaint-latent"):
    after = np.asarray(Image.open(f"{out}/{name}.png").convert("RGB")).astype(int)
    print(f"{name}.png: kept part mean change {np.abs(after - before)[kept].mean():.2f}/255; the evaluator reads it "
          f"as", predict(Image.open(f"{out}/{name}.png")))
# and the ControlNet image-to-image one: the circle's red gone, the silhouette yellow, the background kept blue
picture = np.asarray(Image.open(f"{out}/controlnet-img2img.png").convert("RGB")).astype(int)
silhouette = np.asarray(Image.open(f"{out}/silhouette.png").convert("L")) > 128
r, g, b = picture[..., 0], picture[..., 1], picture[..., 2]
yellow, blue, red = (r > 150) & (g > 150) & (b < 100), (b > 150) & (r < 100) & (g < 100), (r > 150) & (g < 100) & (b < 100)
print(f"controlnet-img2img.png: {yellow[silhouette].mean():.0%} of the silhouette yellow, {blue.mean():.0%} of the "
      f"picture blue, {red.mean():.1%} red")
PY
echo "pictures in $out"
