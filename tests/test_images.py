import io
import threading

import numpy as np
import pytest
from PIL import Image

from patchshift.core.common.errors import InvalidImageError
from patchshift.core.common.images import (
    decode_image,
    list_images,
    load_batch,
    map_to_original,
    open_image,
    to_tensor,
)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_grayscale_is_replicated():
    gray = Image.fromarray(np.full((4, 5), 100, dtype=np.uint8))
    rgb = np.asarray(open_image(encode(gray)))
    assert rgb.shape == (4, 5, 3) and (rgb == 100).all()


def test_alpha_is_dropped():
    rgba = Image.fromarray(
        np.dstack([np.full((3, 3, 3), 200, np.uint8), np.zeros((3, 3, 1), np.uint8)])
    )
    assert (np.asarray(open_image(encode(rgba))) == 200).all()


def test_palette_goes_through_its_palette():
    palette = Image.new("P", (4, 4))
    palette.putpalette([10, 20, 30] + [0] * 765)
    rgb = np.asarray(open_image(encode(palette)))
    assert (rgb[0, 0] == [10, 20, 30]).all()


def test_sixteen_bit_is_scaled_by_257():
    values = np.array([[0, 257 * 10, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    rgb = np.asarray(open_image(encode(image)))
    assert rgb[0, :, 0].tolist() == [0, 10, 255]


def test_float_images_are_zero_to_one():
    image = Image.fromarray(np.array([[0.0, 0.5, 2.0]], dtype=np.float32))
    rgb = np.asarray(open_image(encode(image, "TIFF")))
    assert rgb[0, :, 0].tolist() == [0, 128, 255]


def test_cmyk_converts():
    cmyk = Image.new("CMYK", (2, 2), (0, 0, 0, 0))
    assert np.asarray(open_image(encode(cmyk, "JPEG"))).shape == (2, 2, 3)


def test_exif_orientation_is_applied():
    image = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    rotated = open_image(encode(image, "JPEG", exif=exif))
    assert rotated.size == (10, 20)


@pytest.mark.parametrize(
    "payload,message",
    [
        (b"", "empty"),
        (b"hello, this is text", "not an image"),
    ],
)
def test_bad_bytes(payload, message):
    with pytest.raises(InvalidImageError, match=message):
        open_image(payload, "part.png")


def test_truncated_image():
    data = encode(
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)),
        "JPEG",
    )
    with pytest.raises(InvalidImageError, match="truncated or corrupt"):
        open_image(data[: len(data) // 2], "cut.jpg")


def test_absurd_dimensions():
    data = encode(Image.new("L", (40_000, 1)))
    with pytest.raises(InvalidImageError, match="40000x1"):
        open_image(data, "strip.png")


def test_missing_file(tmp_path):
    with pytest.raises(InvalidImageError, match="no such file"):
        open_image(tmp_path / "none.png")


def test_load_batch_resizes_and_keeps_original_sizes():
    a = encode(Image.new("RGB", (300, 100), (255, 0, 0)))
    b = encode(Image.new("L", (50, 80), 0))
    batch, sizes = load_batch([a, b], (64, 32))
    assert batch.shape == (2, 3, 32, 64)
    assert sizes == [(300, 100), (50, 80)]
    assert batch[0, 0].min() == 1.0 and batch[1].max() == 0.0


def test_empty_batch():
    with pytest.raises(InvalidImageError, match="empty batch"):
        to_tensor([])


def test_map_back_to_original_geometry():
    heat = np.zeros((32, 64), np.float32)
    heat[:, 32:] = 1.0
    back = map_to_original(heat, (300, 100))
    assert back.shape == (100, 300)
    assert back[:, :140].max() < 0.01 and back[:, 160:].min() > 0.99


def test_list_images(tmp_path):
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (2, 2)).save(tmp_path / "b.png")
    Image.new("RGB", (2, 2)).save(tmp_path / "sub" / "a.jpg")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_images([tmp_path])] == ["b.png", "a.jpg"]
    with pytest.raises(InvalidImageError):
        list_images([tmp_path / "missing"])


def test_decoding_from_many_threads_leaves_the_warning_filters_alone():
    """The service decodes uploads on a thread pool. warnings.catch_warnings() is not thread-safe:
    one thread restoring the filters it saved can leave another's temporary filter in place for the
    whole process, so decoding must not touch the filters at all."""
    import warnings

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buffer, format="PNG")
    data = buffer.getvalue()
    before = list(warnings.filters)
    start = threading.Barrier(8)
    decoded = []

    def decode_many():
        start.wait()
        for _ in range(600):
            decoded.append(decode_image(data).size)

    threads = [threading.Thread(target=decode_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert decoded == [(64, 64)] * 4800
    assert list(warnings.filters) == before


def test_grey_frames_resize_before_conversion_gives_identical_pixels() -> None:
    from patchshift.core.common.images import decode_for_model, to_rgb

    rng = np.random.default_rng(0)
    gray = Image.fromarray(rng.integers(0, 256, (301, 517), dtype=np.uint8))
    buffer = io.BytesIO()
    gray.save(buffer, "PNG")
    fast, _, _ = decode_for_model(buffer.getvalue(), (96, 64))
    converted_first = np.asarray(to_rgb(gray).resize((96, 64), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(fast, converted_first)
