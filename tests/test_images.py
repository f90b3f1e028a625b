"""images.py: listing, decoding every odd kind of file, atomic writes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from lldiff_cli import images
from lldiff_cli.errors import ImageReadError, LldiffError
from lldiff_cli.images import list_images, output_path, read_image, write_image
from conftest import pil_open

RNG = np.random.default_rng(0)


def rgb8(h=6, w=10):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def rgb16(h=6, w=10):
    return RNG.integers(0, 65536, (h, w, 3), dtype=np.uint16)


def as_hwc(t: torch.Tensor, scale: float) -> np.ndarray:
    return (t[0].permute(1, 2, 0).numpy() * scale).round()


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.startswith(".") or ".part" in p.name]


# --- reading ------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".webp"])
def test_lossless_8bit_round_trip(tmp_path, suffix):
    data = rgb8()
    PILImage.fromarray(data).save(tmp_path / f"a{suffix}", **({"lossless": True} if suffix == ".webp" else {}))
    im = read_image(tmp_path / f"a{suffix}")
    assert im.rgb.shape == (1, 3, 6, 10) and im.rgb.dtype == torch.float32
    assert im.bit_depth == 8 and im.alpha is None
    np.testing.assert_array_equal(as_hwc(im.rgb, 255), data)
    write_image(tmp_path / f"b{suffix}", im.rgb)
    np.testing.assert_array_equal(np.asarray(pil_open(tmp_path / f"b{suffix}").convert("RGB")), data)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_stays_16bit(tmp_path, suffix):
    data = rgb16()
    cv2.imwrite(str(tmp_path / f"a{suffix}"), data[:, :, ::-1])  # OpenCV is BGR
    im = read_image(tmp_path / f"a{suffix}")
    assert im.bit_depth == 16
    np.testing.assert_array_equal(as_hwc(im.rgb, 65535), data)
    write_image(tmp_path / f"b{suffix}", im.rgb, bit_depth=im.bit_depth)
    back = cv2.imread(str(tmp_path / f"b{suffix}"), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back[:, :, ::-1], data)


def test_16bit_grey_png(tmp_path):
    data = RNG.integers(0, 65536, (5, 7), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "g.png"), data)
    im = read_image(tmp_path / "g.png")
    assert im.bit_depth == 16 and im.rgb.shape == (1, 3, 5, 7)
    np.testing.assert_array_equal(as_hwc(im.rgb, 65535)[:, :, 1], data)


def test_16bit_written_as_jpeg_falls_back_to_8bit(tmp_path):
    write_image(tmp_path / "a.jpg", torch.rand(1, 3, 4, 4), bit_depth=16)
    assert read_image(tmp_path / "a.jpg").bit_depth == 8


def test_grey_becomes_three_equal_channels(tmp_path):
    data = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
    PILImage.fromarray(data, "L").save(tmp_path / "g.png")
    im = read_image(tmp_path / "g.png")
    assert im.rgb.shape == (1, 3, 5, 7)
    for c in range(3):
        np.testing.assert_array_equal(as_hwc(im.rgb, 255)[:, :, c], data)


def test_palette_is_expanded(tmp_path):
    pal = PILImage.fromarray(rgb8()).quantize(colors=8)
    pal.save(tmp_path / "p.png")
    im = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(as_hwc(im.rgb, 255), np.asarray(pal.convert("RGB")))


def test_rgba_alpha_kept_where_the_format_allows(tmp_path):
    data = RNG.integers(0, 256, (6, 10, 4), dtype=np.uint8)
    PILImage.fromarray(data, "RGBA").save(tmp_path / "a.png")
    im = read_image(tmp_path / "a.png")
    assert im.alpha is not None and im.alpha.shape == (1, 1, 6, 10)
    np.testing.assert_array_equal(as_hwc(im.alpha, 255)[:, :, 0], data[:, :, 3])
    write_image(tmp_path / "b.png", im.rgb, im.alpha)
    np.testing.assert_array_equal(np.asarray(pil_open(tmp_path / "b.png")), data)
    write_image(tmp_path / "b.jpg", im.rgb, im.alpha)  # JPEG has no alpha: dropped
    assert pil_open(tmp_path / "b.jpg").mode == "RGB"


def test_cmyk_jpeg(tmp_path):
    PILImage.fromarray(rgb8(16, 16)).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    im = read_image(tmp_path / "c.jpg")
    assert im.rgb.shape == (1, 3, 16, 16)
    expected = np.asarray(pil_open(tmp_path / "c.jpg").convert("RGB"))
    np.testing.assert_array_equal(as_hwc(im.rgb, 255), expected)


@pytest.mark.parametrize("orientation,shape", [(1, (4, 8)), (3, (4, 8)), (6, (8, 4)), (8, (8, 4))])
def test_exif_orientation_applied(tmp_path, orientation, shape):
    data = np.zeros((4, 8, 3), np.uint8)
    data[0, 0] = 255  # a white top-left corner to follow
    exif = PILImage.Exif()
    exif[0x0112] = orientation
    PILImage.fromarray(data).save(tmp_path / "r.png", exif=exif)
    im = read_image(tmp_path / "r.png")
    assert im.size == shape
    corner = {1: (0, 0), 3: (3, 7), 6: (0, 3), 8: (7, 0)}[orientation]
    assert im.rgb[0, :, corner[0], corner[1]].min() == 1.0


def test_exif_rotated_jpeg(tmp_path):
    exif = PILImage.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Canon"
    PILImage.fromarray(rgb8(4, 8)).save(tmp_path / "r.jpg", exif=exif)
    im = read_image(tmp_path / "r.jpg")
    assert im.size == (8, 4)
    for suffix in (".jpg", ".png", ".webp"):  # the camera's tags go on, the pixels are upright now
        images.write_like(tmp_path / f"out{suffix}", im.rgb, im)
        tags = pil_open(tmp_path / f"out{suffix}").getexif()
        assert tags.get(0x010F) == "Canon" and tags.get(0x0112) == 1, suffix
        assert read_image(tmp_path / f"out{suffix}").size == (8, 4)


def test_large_images_are_not_refused(tmp_path):
    write_image(tmp_path / "a.png", torch.zeros(1, 3, 2, 2))
    read_image(tmp_path / "a.png")
    assert PILImage.MAX_IMAGE_PIXELS == images.MAX_PIXELS > 179_000_000


# --- bad files ----------------------------------------------------------------


def _truncated_png(path: Path) -> None:
    PILImage.fromarray(rgb8(64, 64)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("name,make,reason", [
    ("zero.png", lambda p: p.write_bytes(b""), "empty file"),
    ("text.jpg", lambda p: p.write_text("not an image"), "not a recognised image"),
    ("cut.png", _truncated_png, "truncated"),
    ("junk.png", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4), ""),
])
def test_bad_files_raise_with_path_and_reason(tmp_path, name, make, reason):
    make(tmp_path / name)
    with pytest.raises(ImageReadError) as info:
        read_image(tmp_path / name)
    assert info.value.path == tmp_path / name
    assert name in str(info.value) and reason in info.value.reason


def test_missing_file_raises_image_read_error(tmp_path):
    with pytest.raises(ImageReadError, match="nope.png"):
        read_image(tmp_path / "nope.png")


# --- listing ------------------------------------------------------------------


def test_list_images_sorted_recursive_and_skips_other_files(tmp_path):
    for rel in ["b.png", "a.JPG", "c.jpeg", "d.bmp", "e.tiff", "f.tif", "g.webp", "sub/h.png",
                "notes.txt", "x.gif", ".hidden.png", ".a.part.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "folder.png").mkdir()
    top = ["a.JPG", "b.png", "c.jpeg", "d.bmp", "e.tiff", "f.tif", "g.webp"]
    assert list_images(tmp_path) == [Path(p) for p in top]
    assert list_images(tmp_path, recursive=True) == [Path(p) for p in top + ["sub/h.png"]]


def test_list_images_of_a_missing_folder(tmp_path):
    with pytest.raises(LldiffError, match="does not exist"):
        list_images(tmp_path / "nope")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(LldiffError, match="not a folder"):
        list_images(tmp_path / "file.png")


# --- writing ------------------------------------------------------------------


def test_write_is_atomic_and_leaves_no_temp_file(tmp_path, monkeypatch):
    write_image(tmp_path / "sub" / "a.png", torch.rand(1, 3, 4, 4))
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.png"]

    def broken(tmp, planes, suffix, icc=None, exif=None):
        Path(tmp).write_bytes(b"half an image")
        raise OSError("disk full")

    monkeypatch.setattr(images, "_write8", broken)
    with pytest.raises(OSError):
        write_image(tmp_path / "sub" / "b.png", torch.rand(1, 3, 4, 4))
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.png"]
    assert no_temp_files(tmp_path)


def test_write_refuses_unknown_extension(tmp_path):
    with pytest.raises(LldiffError, match="unknown image extension"):
        write_image(tmp_path / "a.gif", torch.rand(1, 3, 4, 4))


def test_output_path_mirrors_and_changes_format():
    assert output_path(Path("out"), Path("sub/a.JPG")) == Path("out/sub/a.JPG")
    assert output_path(Path("out"), Path("sub/a.JPG"), "png") == Path("out/sub/a.png")
    assert output_path(Path("out"), Path("a.png"), "jpeg") == Path("out/a.jpg")
    assert output_path(Path("out"), Path("a.png"), ".TIFF") == Path("out/a.tif")
    with pytest.raises(LldiffError, match="allowed"):
        output_path(Path("out"), Path("a.png"), "gif")


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".webp", ".bmp"])
def test_grey_is_remembered_and_written_back_as_one_channel(tmp_path, suffix):
    data = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
    PILImage.fromarray(data, "L").save(tmp_path / "g.png")
    im = read_image(tmp_path / "g.png")
    assert im.grey and not read_image_rgb(tmp_path).grey
    tinted = im.rgb.clone()
    tinted[:, 0] += 0.03  # a model's output of a grey input need not be exactly grey
    write_image(tmp_path / f"out{suffix}", tinted, grey=True)
    back = pil_open(tmp_path / f"out{suffix}")
    if suffix == ".webp":  # WebP has no grey mode: three equal channels
        channels = np.asarray(back)
        assert back.mode == "RGB" and (channels == channels[:, :, :1]).all()
        back = back.convert("L")
    assert back.mode == "L"
    if suffix != ".jpg":  # lossless: the grey level is the mean of the three channels
        expected = np.round(tinted[0].mean(0).clamp(0, 1).numpy() * 255)
        np.testing.assert_array_equal(np.asarray(back), expected)


def test_grey_with_alpha_and_16bit_grey_are_written_back_grey(tmp_path):
    data = RNG.integers(0, 256, (6, 4, 2), dtype=np.uint8)
    PILImage.fromarray(data, "LA").save(tmp_path / "la.png")
    im = read_image(tmp_path / "la.png")
    assert im.grey and im.alpha is not None
    write_image(tmp_path / "la_out.png", im.rgb, im.alpha, grey=True)
    np.testing.assert_array_equal(np.asarray(pil_open(tmp_path / "la_out.png")), data)

    deep = RNG.integers(0, 65536, (5, 7), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), deep)
    im = read_image(tmp_path / "g16.png")
    assert im.grey and im.bit_depth == 16
    write_image(tmp_path / "g16_out.png", im.rgb, bit_depth=16, grey=True)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "g16_out.png"), cv2.IMREAD_UNCHANGED), deep)


def read_image_rgb(folder):
    PILImage.fromarray(rgb8()).save(folder / "rgb.png")
    return read_image(folder / "rgb.png")


def test_a_colour_profile_is_kept_for_the_colour_space_written(tmp_path):
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    PILImage.fromarray(rgb8()).save(tmp_path / "p3.jpg", icc_profile=srgb)
    im = read_image(tmp_path / "p3.jpg")
    assert im.icc == srgb and read_image_rgb(tmp_path).icc is None
    for suffix in (".png", ".jpg", ".webp", ".tif"):
        write_image(tmp_path / f"out{suffix}", im.rgb, icc=im.icc)
        assert pil_open(tmp_path / f"out{suffix}").info.get("icc_profile") == srgb, suffix
    write_image(tmp_path / "out.bmp", im.rgb, icc=im.icc)  # BMP has no place for it
    write_image(tmp_path / "grey.png", im.rgb, grey=True, icc=im.icc)  # an RGB profile on grey: dropped
    assert pil_open(tmp_path / "grey.png").info.get("icc_profile") is None
    cmyk = srgb[:16] + b"CMYK" + srgb[20:]
    write_image(tmp_path / "cmyk.png", im.rgb, icc=cmyk)
    assert pil_open(tmp_path / "cmyk.png").info.get("icc_profile") is None


def test_exif_too_large_for_jpeg_is_left_out_not_the_image(tmp_path):
    exif = PILImage.Exif()
    exif[0x010E] = "x" * 70_000  # ImageDescription
    write_image(tmp_path / "big.jpg", torch.rand(1, 3, 4, 4), exif=exif.tobytes())
    assert read_image(tmp_path / "big.jpg").exif is None
    write_image(tmp_path / "big.png", torch.rand(1, 3, 4, 4), exif=exif.tobytes())
    assert read_image(tmp_path / "big.png").exif is not None


def test_heic_is_read_upright_and_written_with_its_profile_and_exif(tmp_path):
    pytest.importorskip("pillow_heif")
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = PILImage.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Apple"
    write_image(tmp_path / "phone.heic", torch.rand(1, 3, 20, 30), icc=profile, exif=exif.tobytes())
    im = read_image(tmp_path / "phone.heic")
    assert im.size == (30, 20) and im.icc == profile  # pillow-heif turns it upright
    images.write_like(tmp_path / "out.heic", im.rgb, im)
    back = read_image(tmp_path / "out.heic")
    assert back.size == (30, 20) and back.icc == profile
    assert pil_open(tmp_path / "out.heic").getexif().get(0x010F) == "Apple"
    assert np.abs(as_hwc(back.rgb, 255).astype(int) - as_hwc(im.rgb, 255).astype(int)).mean() < 4


def test_deep_heic_stays_deep(tmp_path):
    """10-bit HEIC (cameras' and phones' HDR photos) is read in 16 bits, full range, and written back in 10."""
    pillow_heif = pytest.importorskip("pillow_heif")
    white = np.full((8, 12, 3), 1023 << 6, np.uint16)  # pillow-heif holds 10-bit samples in the top bits
    pillow_heif.from_bytes(mode="RGB;16", size=(12, 8), data=white.tobytes()).save(tmp_path / "w.heic")
    im = read_image(tmp_path / "w.heic")
    assert im.bit_depth == 16 and float(im.rgb.min()) == 1.0  # 1023 of 1023 is white, not 65472 / 65535
    ramp = torch.linspace(0, 1, 48).view(1, 1, 1, 48).expand(1, 3, 32, 48)
    alpha = torch.full((1, 1, 32, 48), 0.5)
    for name, kwargs in [("rgb.heic", {}), ("rgba.heic", {"alpha": alpha}), ("grey.heif", {"grey": True})]:
        write_image(tmp_path / name, ramp, bit_depth=16, **kwargs)
        assert pillow_heif.open_heif(tmp_path / name, convert_hdr_to_8bit=False).info["bit_depth"] == 10
        back = read_image(tmp_path / name)
        assert back.bit_depth == 16 and back.grey == ("grey" in name)
        assert (back.alpha is not None) == ("alpha" in kwargs)
        assert float((back.rgb - ramp).abs().mean()) < 2 / 255
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = PILImage.Exif()
    exif[0x010F] = "Canon"
    write_image(tmp_path / "tagged.heic", ramp, bit_depth=16, icc=profile, exif=exif.tobytes())
    back = read_image(tmp_path / "tagged.heic")
    assert back.bit_depth == 16 and back.icc == profile
    assert pil_open(tmp_path / "tagged.heic").getexif().get(0x010F) == "Canon"


def test_heic_without_pillow_heif_is_a_clear_error(tmp_path, monkeypatch, request):
    import builtins

    images._register_heif.cache_clear()  # registration is cached: forget it here and afterwards
    request.addfinalizer(images._register_heif.cache_clear)
    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "pillow_heif" else real_import(name, *a, **k))
    (tmp_path / "a.heic").write_bytes(b"\0\0\0\x18ftypheic")
    with pytest.raises(ImageReadError, match="a.heic: HEIC / HEIF needs the pillow-heif package"):
        read_image(tmp_path / "a.heic")
    with pytest.raises(LldiffError, match="cannot write .*b.heic: HEIC / HEIF needs"):
        write_image(tmp_path / "b.heic", torch.rand(1, 3, 4, 4))
