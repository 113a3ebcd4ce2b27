"""Loading an image: EXIF orientation, alpha, sizing to the token budget, the pixel id, an empty file."""

from __future__ import annotations

import pytest

from kvl_cli.errors import InputError
from kvl_cli.media.images import InputRef, load_image


def test_exif_orientation_is_honoured(tmp_path):
    from PIL import Image

    img = Image.new("RGB", (80, 40), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif.tobytes())
    loaded = load_image(InputRef(str(path), path=path))
    assert (loaded.width, loaded.height) == (40, 80)


def test_alpha_is_flattened_onto_white(tmp_path):
    from PIL import Image

    path = tmp_path / "clear.png"
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(path)
    loaded = load_image(InputRef(str(path), path=path))
    assert loaded.rgb[:3] == b"\xff\xff\xff"


def test_large_images_are_sized_to_the_token_budget(tmp_path):
    from PIL import Image

    path = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (1, 2, 3)).save(path)
    loaded = load_image(InputRef(str(path), path=path), max_tokens=100)
    assert loaded.width * loaded.height <= 100 * 28 * 28 * 1.05
    assert abs(loaded.width / loaded.height - 4 / 3) < 0.05


def test_same_pixels_same_id(tmp_path):
    from PIL import Image

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (30, 30), (9, 9, 9)).save(a)
    Image.new("RGB", (30, 30), (9, 9, 9)).save(b)
    assert load_image(InputRef("a", path=a)).id == load_image(InputRef("b", path=b)).id


def test_unreadable_file(tmp_path):
    with pytest.raises(InputError, match="file is empty"):
        (tmp_path / "z.png").write_bytes(b"")
        load_image(InputRef("z.png", path=tmp_path / "z.png"))
