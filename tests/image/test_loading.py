"""load_image / make_image_grid against diffusers.utils, and the sfumato.utils re-exports."""

from __future__ import annotations

import functools
import http.server
import threading

import numpy as np
import PIL.Image
import pytest
from diffusers.utils import load_image as reference_load_image
from diffusers.utils import make_image_grid as reference_make_image_grid

from sfumato.image import loading
from sfumato.image.loading import ImageLoadError, load_image, make_image_grid

EXIF_ORIENTATION = 0x0112


def _picture(width=24, height=16, mode="RGB", seed=0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return PIL.Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode=mode)


def _same(a: PIL.Image.Image, b: PIL.Image.Image) -> None:
    assert a.mode == b.mode and a.size == b.size
    assert np.array_equal(np.array(a), np.array(b))


@pytest.fixture
def image_server(tmp_path):
    """A local http.server over tmp_path on 127.0.0.1; stopped when the test ends."""

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_load_image_from_path_matches_reference(tmp_path, mode):
    path = tmp_path / "picture.png"
    _picture(mode=mode).save(path)
    ours = load_image(str(path))
    _same(ours, reference_load_image(str(path)))
    assert ours.mode == "RGB"
    _same(load_image(path), ours)  # pathlib paths work too


def test_load_image_applies_exif_orientation(tmp_path):
    picture = _picture(24, 16)
    exif = picture.getexif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90 clockwise to view"
    path = tmp_path / "phone.jpg"
    picture.save(path, exif=exif.tobytes(), quality=95)

    ours = load_image(str(path))
    assert ours.size == (16, 24)  # turned upright
    _same(ours, reference_load_image(str(path)))
    opened = PIL.Image.open(path)
    _same(load_image(opened), reference_load_image(PIL.Image.open(path)))


def test_load_image_convert_method(tmp_path):
    path = tmp_path / "picture.png"
    _picture().save(path)
    gray = load_image(str(path), convert_method=lambda img: img.convert("L"))
    assert gray.mode == "L"
    _same(gray, reference_load_image(str(path), convert_method=lambda img: img.convert("L")))


def test_load_image_from_pil_matches_reference():
    picture = _picture(mode="RGBA")
    _same(load_image(picture), reference_load_image(picture))


def test_load_image_from_url_matches_reference(image_server):
    folder, base_url = image_server
    _picture(20, 12).save(folder / "frog.png")
    url = f"{base_url}/frog.png"
    _same(load_image(url), reference_load_image(url))


def test_load_image_url_errors_name_the_url(image_server, monkeypatch):
    folder, base_url = image_server
    monkeypatch.setattr(loading, "REQUEST_TIMEOUT", 5.0)
    missing = f"{base_url}/missing.png"
    with pytest.raises(ImageLoadError, match="missing.png.*404"):
        load_image(missing)
    (folder / "notes.txt").write_text("not a picture")
    with pytest.raises(ImageLoadError, match="notes.txt"):
        load_image(f"{base_url}/notes.txt")


def test_load_image_unreachable_host_names_the_url(monkeypatch):
    monkeypatch.setattr(loading, "REQUEST_TIMEOUT", 5.0)
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.png"
    with pytest.raises(OSError, match=f"127.0.0.1:{port}/x.png"):
        load_image(url)


def test_load_image_bad_input(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_image(str(tmp_path / "nope.png"))
    with pytest.raises(TypeError, match="image must be .* got int"):
        load_image(3)
    with pytest.raises(TypeError, match="convert_method"):
        load_image(_picture(), convert_method="L")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"garbage")
    with pytest.raises(ImageLoadError, match="broken.png"):
        load_image(str(broken))


@pytest.mark.parametrize("rows, cols, resize", [(1, 3, None), (2, 2, None), (3, 1, 10), (2, 3, 7)])
def test_make_image_grid_matches_reference(rows, cols, resize):
    images = [_picture(12, 8, mode="RGB" if i % 2 else "L", seed=i) for i in range(rows * cols)]
    _same(make_image_grid(images, rows, cols, resize), reference_make_image_grid(images, rows, cols, resize))


def test_make_image_grid_bad_input():
    images = [_picture(seed=i) for i in range(3)]
    with pytest.raises(ValueError, match=r"rows \* cols = 2 \* 2 = 4 images, got 3"):
        make_image_grid(images, 2, 2)
    with pytest.raises(ValueError, match="rows must be a positive integer, got 0"):
        make_image_grid(images, 0, 3)
    with pytest.raises(ValueError, match="resize"):
        make_image_grid(images, 1, 3, resize=-2)
    with pytest.raises(TypeError, match=r"images\[1\]"):
        make_image_grid([images[0], np.zeros((4, 4, 3)), images[2]], 1, 3)


def test_utils_reexports_like_diffusers_utils():
    import sfumato.utils as utils
    from sfumato.image import convert
    from sfumato.random import randn_tensor

    assert utils.load_image is load_image and utils.make_image_grid is make_image_grid
    assert utils.randn_tensor is randn_tensor
    assert utils.pt_to_pil is convert.pt_to_pil
    assert utils.numpy_to_pil is convert.numpy_to_pil and utils.pil_to_numpy is convert.pil_to_numpy
    from sfumato.utils import load_image as again  # the guides' import line

    assert again is load_image
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        utils.nope
