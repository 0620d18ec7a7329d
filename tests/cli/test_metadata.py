"""PNG parameters: written atomically as UTF-8 JSON, read back, refused clearly when absent."""

import os

import PIL.Image
import pytest

from sfumato.metadata import MetadataError, read_parameters, write_png


def test_round_trip_keeps_unicode_and_pixels(tmp_path):
    image = PIL.Image.new("RGB", (4, 3), (10, 20, 30))
    parameters = {"prompt": "قطة على سطح", "seed": 2 ** 40, "weights": [0.25, 0.75], "negative_prompt": None}
    path = write_png(image, tmp_path / "sub" / "out.png", parameters)
    assert read_parameters(path) == parameters
    with PIL.Image.open(path) as written:
        assert written.format == "PNG" and written.getpixel((0, 0)) == (10, 20, 30)
    assert oct(os.stat(path).st_mode & 0o777) != oct(0o600)  # not the temporary file's private mode


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    write_png(PIL.Image.new("RGB", (2, 2)), target, {"seed": 1})
    before = target.read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(PIL.Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_png(PIL.Image.new("RGB", (2, 2), (255, 0, 0)), target, {"seed": 2})
    assert target.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # and no temporary file is left


def test_missing_or_foreign_files_raise_metadata_error(tmp_path):
    with pytest.raises(MetadataError, match="does not exist"):
        read_parameters(tmp_path / "missing.png")
    PIL.Image.new("RGB", (2, 2)).save(tmp_path / "plain.jpg")
    with pytest.raises(MetadataError, match="JPEG"):
        read_parameters(tmp_path / "plain.jpg")
    (tmp_path / "text.png").write_text("not a picture")
    with pytest.raises(MetadataError, match="not a picture"):
        read_parameters(tmp_path / "text.png")
