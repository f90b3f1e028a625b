"""Listing, reading and writing images: the one tensor convention of lldiff.

Every image inside lldiff is a float32 RGB tensor of shape 1x3xHxW with values in
[0, 1]. Conversion happens only here, at the edges:

* reading applies the EXIF orientation, expands greyscale / palette / CMYK to RGB,
  keeps an alpha channel apart (1x1xHxW, [0, 1]) and remembers the bit depth
  (8 or 16), whether the file was greyscale, its ICC colour profile and its EXIF
  block, so that an output can be written back as 16-bit, as greyscale, in the same
  colour space and with the camera's metadata (:func:`write_like`);
* writing goes to a temporary name in the target folder and is renamed into place,
  so a killed run never leaves a half-written image behind.

Unreadable files raise :class:`ImageReadError` naming the file and the reason.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lldiff_cli.atomic import atomic_write
from lldiff_cli.errors import ImageReadError, LldiffError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".heic", ".heif")
# Output formats a user may ask for with --format, and the extension each writes.
FORMATS = {"png": ".png", "jpg": ".jpg", "jpeg": ".jpg", "bmp": ".bmp",
           "tif": ".tif", "tiff": ".tif", "webp": ".webp", "heic": ".heic", "heif": ".heif"}
_ALPHA_FORMATS = (".png", ".tif", ".tiff", ".webp", ".heic", ".heif")
# HEIC / HEIF (phones' photos) go through the pillow-heif plugin, registered on first use.
_HEIF_EXTENSIONS = (".heic", ".heif")
_NO_HEIF = "HEIC / HEIF needs the pillow-heif package (pip install pillow-heif)"
_SIXTEEN_BIT_FORMATS = (".png", ".tif", ".tiff", ".heic", ".heif")  # HEIC: written in 10 bits
# Pillow refuses images above ~179 Mpx as "decompression bombs". lldiff never
# downscales silently; it allows up to 1 Gpx and tiles inside the model instead.
MAX_PIXELS = 1 << 30


@dataclass
class Image:
    """A decoded image.

    rgb: float32 tensor 1x3xHxW in [0, 1].
    alpha: float32 tensor 1x1xHxW in [0, 1], or None when the file has none.
    bit_depth: 8 or 16, the depth of the stored samples.
    grey: the file held one colour channel (rgb holds it three times).
    icc: the file's embedded ICC colour profile (bytes), or None.
    exif: the file's EXIF block (bytes) with its orientation reset to upright, as ``rgb`` is;
    None when the file has none.
    """

    rgb: torch.Tensor
    alpha: torch.Tensor | None = None
    bit_depth: int = 8
    grey: bool = False
    icc: bytes | None = None
    exif: bytes | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return int(self.rgb.shape[-2]), int(self.rgb.shape[-1])


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(root: Path, recursive: bool = False) -> list[Path]:
    """Image files under ``root`` as paths relative to it, sorted.

    Files with other extensions and hidden files (our own temporary files among
    them) are skipped quietly. Raises LldiffError when ``root`` is not a readable folder.
    """
    return list_files(root, recursive)[0]


def list_files(root: Path, recursive: bool = False) -> tuple[list[Path], list[Path]]:
    """(images, others): the files under ``root`` as paths relative to it, each list sorted.
    ``others`` are the visible files that are not images of a supported type (a GIF, a RAW file,
    notes), for a batch to say what it left out; hidden files (our own temporary files among
    them) are in neither. Raises LldiffError when ``root`` is not a readable folder."""
    root = Path(root)
    if not root.exists():
        raise LldiffError(f"input folder does not exist: {root}")
    if not root.is_dir():
        raise LldiffError(f"input is not a folder: {root}")
    if not os.access(root, os.R_OK | os.X_OK):
        raise LldiffError(f"input folder is not readable: {root}")
    pattern = root.rglob("*") if recursive else root.glob("*")
    files = sorted((p for p in pattern if p.is_file() and not p.name.startswith(".")), key=lambda p: p.as_posix())
    images = [p.relative_to(root) for p in files if is_image_file(p)]
    return images, [p.relative_to(root) for p in files if not is_image_file(p)]


def read_image(path: Path) -> Image:
    """Decode ``path`` into an :class:`Image`. Raises ImageReadError on any failure."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageReadError(path, exc.strerror or str(exc)) from None
    if size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    try:
        array, bit_depth, icc, exif = _decode(path)
    except ImageReadError:
        raise
    except Exception as exc:  # Pillow and OpenCV raise many types for bad data
        raise ImageReadError(path, _describe(exc)) from None
    return _to_image(array, bit_depth, icc, exif)


def _describe(exc: Exception) -> str:
    text = str(exc)
    if "cannot identify image file" in text:
        return "not a recognised image format (corrupt, or not an image despite its name)"
    if "truncated" in text.lower():
        return "truncated image data"
    return f"cannot decode ({type(exc).__name__}: {text})"


def _heif_ready(path: Path) -> bool:
    """Whether Pillow can read and write ``path``'s format: True for all but HEIC / HEIF
    without the pillow-heif package."""
    return path.suffix.lower() not in _HEIF_EXTENSIONS or _register_heif()


@functools.cache
def _register_heif() -> bool:
    """Register pillow-heif's HEIC / HEIF plugin with Pillow, once; False without the package."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def _decode(path: Path) -> tuple[np.ndarray, int, bytes | None, bytes | None]:
    """Return an HxWxC array (C in 1..4, RGB(A) order), its bit depth, ICC profile and EXIF.

    HEIC / HEIF arrive upright (pillow-heif applies their orientation); 10- and 12-bit ones
    (HDR photos) arrive in 16 bits, full range."""
    from PIL import Image as PILImage, ImageOps

    if not _heif_ready(path):
        raise ImageReadError(path, _NO_HEIF)
    PILImage.MAX_IMAGE_PIXELS = MAX_PIXELS
    with PILImage.open(path) as im:
        im.load()  # decode now so truncation errors surface here
        tags = im.getexif()
        orientation = tags.get(0x0112, 1)
        exif = None
        if len(tags):  # a copy: exif_transpose below still reads the orientation from im
            upright = PILImage.Exif()
            upright.load(tags.tobytes())
            if 0x0112 in upright:
                upright[0x0112] = 1  # the pixels are turned upright below
            exif = upright.tobytes()
        icc = im.info.get("icc_profile") or None
        if not _is_sixteen_bit(path, im):
            im = ImageOps.exif_transpose(im)
            return _pil_to_array(im), 8, icc, exif
        if im.format == "HEIF":
            return _decode_deep_heif(path, im.info["bit_depth"]), 16, icc, exif
    # Pillow cannot hold 16-bit colour; OpenCV can. Orientation applied by hand.
    import cv2

    data = np.fromfile(path, dtype=np.uint8)
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ImageReadError(path, "cannot decode 16-bit image")
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.shape[2] == 3:
        array = array[:, :, ::-1]
    elif array.shape[2] == 4:
        array = array[:, :, [2, 1, 0, 3]]
    array = _apply_orientation(np.ascontiguousarray(array), orientation)
    return array, (16 if array.dtype == np.uint16 else 8), icc, exif


def _is_sixteen_bit(path: Path, im) -> bool:
    if im.format == "HEIF":  # Pillow gets 10- and 12-bit HEIC in 8 bits
        return im.info.get("bit_depth", 8) > 8
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        return True
    if path.suffix.lower() == ".png" and im.format == "PNG":
        # IHDR bit depth: byte 24 of the file. Pillow reduces 16-bit RGB(A) to 8 bits.
        with open(path, "rb") as fh:
            head = fh.read(25)
        return len(head) == 25 and head[24] == 16
    if im.format == "TIFF":
        bits = im.tag_v2.get(258) if hasattr(im, "tag_v2") else None
        return bool(bits) and max(bits if isinstance(bits, tuple) else (bits,)) == 16
    return False


def _decode_deep_heif(path: Path, bits: int) -> np.ndarray:
    """A 10- or 12-bit HEIC / HEIF as HxWxC uint16, full range (the top sample is 65535)."""
    import pillow_heif

    raw = np.asarray(pillow_heif.open_heif(path, convert_hdr_to_8bit=False))
    # pillow-heif shifts the samples to the top of 16 bits: 1023 << 6 = 65472 for 10-bit white.
    levels = (raw >> (16 - bits)).astype(np.float64)
    array = np.rint(levels * (65535 / ((1 << bits) - 1))).astype(np.uint16)
    return array[:, :, None] if array.ndim == 2 else array


def _pil_to_array(im) -> np.ndarray:
    if im.mode in ("LA", "La"):
        return np.asarray(im.convert("LA"))
    if im.mode in ("RGBA", "PA") or (im.mode == "P" and "transparency" in im.info):
        return np.asarray(im.convert("RGBA"))
    if im.mode in ("1", "L"):
        return np.asarray(im.convert("L"))[:, :, None]
    return np.asarray(im.convert("RGB"))  # RGB, CMYK, YCbCr, P, F ...


def _apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation tag (1..8) to an HxWxC array."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
        8: lambda a: np.rot90(a, 1),
    }
    op = ops.get(orientation)
    return np.ascontiguousarray(op(array)) if op else array


def _to_image(array: np.ndarray, bit_depth: int, icc: bytes | None, exif: bytes | None) -> Image:
    scale = 65535.0 if bit_depth == 16 else 255.0
    data = torch.from_numpy(array.astype(np.float32) / scale).permute(2, 0, 1).unsqueeze(0)
    channels = data.shape[1]
    alpha = None
    if channels in (2, 4):
        alpha = data[:, -1:].contiguous()
        data = data[:, :-1]
    grey = data.shape[1] == 1
    if grey:
        data = data.expand(-1, 3, -1, -1)
    return Image(rgb=data.contiguous(), alpha=alpha, bit_depth=bit_depth, grey=grey, icc=icc, exif=exif)


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """1x3xHxW (or 3xHxW) float in [0, 1] -> HxWx3 uint8, rounded as a saved image is."""
    if rgb.dim() == 4:
        rgb = rgb[0]
    arr = rgb.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return arr.permute(1, 2, 0).cpu().numpy()


def write_like(path: Path, rgb: torch.Tensor, source: Image) -> None:
    """Write ``rgb``, an image made from ``source``, as a file of the source's kind: its alpha,
    bit depth, greyscale, colour profile and EXIF, where the format allows (:func:`write_image`)."""
    write_image(path, rgb, source.alpha, source.bit_depth, grey=source.grey, icc=source.icc, exif=source.exif)


def write_image(path: Path, rgb: torch.Tensor, alpha: torch.Tensor | None = None,
                bit_depth: int = 8, grey: bool = False, icc: bytes | None = None,
                exif: bytes | None = None) -> None:
    """Write ``rgb`` (1x3xHxW in [0, 1]) atomically; the format follows the extension.

    Alpha is kept for PNG, TIFF, WebP and HEIC and dropped elsewhere. ``bit_depth=16``
    writes 16-bit samples for PNG and TIFF, 10-bit ones for HEIC / HEIF, and falls back to
    8 bits for the others.
    ``grey=True`` writes one channel, the mean of R, G and B (WebP stores it as RGB); ``rgb``
    may then hold that one channel already (1x1xHxW). ``icc`` (a source's colour profile) is
    embedded in 8-bit PNG, JPEG, WebP, TIFF and in HEIC when it describes the colour space written
    (RGB or grey); BMP and 16-bit PNG and TIFF are written without it. ``exif`` (a source's EXIF
    block) is embedded in 8-bit PNG, JPEG, WebP and in HEIC.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        raise LldiffError(f"cannot write {path}: unknown image extension {suffix!r}; "
                          f"allowed: {', '.join(IMAGE_EXTENSIONS)}")
    if not _heif_ready(path):
        raise LldiffError(f"cannot write {path}: {_NO_HEIF}")
    path.parent.mkdir(parents=True, exist_ok=True)
    planes = rgb[0] if rgb.dim() == 4 else rgb
    if grey:
        planes = planes.mean(dim=0, keepdim=True)
    if alpha is not None and suffix in _ALPHA_FORMATS:
        a = alpha[0] if alpha.dim() == 4 else alpha
        planes = torch.cat([planes, a], dim=0)
    with atomic_write(path, suffix) as tmp:
        if bit_depth == 16 and suffix in _SIXTEEN_BIT_FORMATS:
            _write16(str(tmp), planes, suffix, icc, exif)
        else:
            _write8(str(tmp), planes, suffix, icc, exif)


def _write8(tmp: str, planes: torch.Tensor, suffix: str, icc: bytes | None = None,
            exif: bytes | None = None) -> None:
    from PIL import Image as PILImage

    arr = planes.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    arr = arr.permute(1, 2, 0).cpu().numpy()
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[arr.shape[2]]
    im = PILImage.fromarray(arr[:, :, 0] if mode == "L" else arr, mode)
    options = {}
    jpeg = suffix in (".jpg", ".jpeg")
    if jpeg:
        options = {"quality": 95, "subsampling": 0}
    elif suffix in _HEIF_EXTENSIONS:
        options = {"quality": 95}
    elif suffix == ".webp":
        options = {"lossless": True}
    profile = _profile_for(icc, grey=mode in ("L", "LA") and suffix != ".webp")  # WebP stores grey as RGB
    if profile and suffix != ".bmp":
        options["icc_profile"] = profile
    # JPEG holds at most 64 KB of EXIF (one APP1 segment): a larger block is left out, not the image.
    if exif and (suffix in (".png", ".webp", *_HEIF_EXTENSIONS) or jpeg and len(exif) < 65_000):
        options["exif"] = exif
    im.save(tmp, format=_PIL_FORMAT[suffix], **options)


def _profile_for(icc: bytes | None, *, grey: bool) -> bytes | None:
    """``icc`` when it describes the colour space written (grey or RGB), else None: a CMYK
    source's profile is not kept, as we write RGB. Bytes 16-19 of an ICC header name the space."""
    return icc if icc and icc[16:20] == (b"GRAY" if grey else b"RGB ") else None


_PIL_FORMAT = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP",
               ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP", ".heic": "HEIF", ".heif": "HEIF"}


def _write16(tmp: str, planes: torch.Tensor, suffix: str, icc: bytes | None = None,
             exif: bytes | None = None) -> None:
    import cv2

    arr = planes.detach().float().clamp(0, 1).mul(65535).round().to(torch.int32)
    arr = arr.permute(1, 2, 0).cpu().numpy().astype(np.uint16)
    if arr.shape[2] == 2:  # neither OpenCV nor HEIF writes grey + alpha: grey three times, then alpha
        arr = arr[:, :, [0, 0, 0, 1]]
    if suffix in _HEIF_EXTENSIONS:
        _write_deep_heif(tmp, arr, icc, exif)
        return
    if arr.shape[2] == 3:
        arr = arr[:, :, ::-1]
    elif arr.shape[2] == 4:
        arr = arr[:, :, [2, 1, 0, 3]]
    if not cv2.imwrite(tmp, np.ascontiguousarray(arr)):
        raise LldiffError(f"OpenCV could not write {tmp}")


def _write_deep_heif(tmp: str, arr: np.ndarray, icc: bytes | None, exif: bytes | None) -> None:
    """Write HxWxC (C = 1, 3 or 4) uint16 samples as a 10-bit HEIC / HEIF, with the profile and
    EXIF as :func:`_write8`."""
    import pillow_heif

    mode = {1: "L;16", 3: "RGB;16", 4: "RGBA;16"}[arr.shape[2]]
    height, width = arr.shape[:2]
    heif = pillow_heif.from_bytes(mode=mode, size=(width, height), data=np.ascontiguousarray(arr).tobytes())
    profile = _profile_for(icc, grey=mode == "L;16")
    heif.save(tmp, format="HEIF", quality=95, exif=exif, **({"icc_profile": profile} if profile else {}))


def output_path(out_root: Path, rel: Path, fmt: str | None = None) -> Path:
    """Where the output for input ``rel`` goes: the same relative path, extension
    replaced when ``fmt`` names a format."""
    target = Path(out_root) / rel
    return target.with_suffix(check_format(fmt)) if fmt else target


def check_format(fmt: str | None) -> str | None:
    """The extension --format ``fmt`` writes (None: the input's own), or LldiffError listing the allowed."""
    if fmt is None:
        return None
    key = fmt.lower().lstrip(".")
    if key not in FORMATS:
        raise LldiffError(f"unknown output format {fmt!r}; allowed: {', '.join(sorted(FORMATS))}")
    return FORMATS[key]
