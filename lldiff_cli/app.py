"""`lldiff app`: a local web page to try a model on one's own photos (Gradio, the ``app`` extra).

The page is a shell over one function, :func:`enhance_upload`: one uploaded file through the path
`lldiff enhance` takes (images.read_image -> enhance.enhance_image, tiled above the model's bound
-> images.write_like, so the download keeps the photo's format, bit depth, colour profile and EXIF),
returned as a before / after preview, the full-size file and a message. Bad input (not an image, a
photo over the page's size limit, a step count the model lacks) is a message, never an exception.

gradio is imported only by :func:`build_app` (:func:`require_gradio`), so the core and
``lldiff --help`` stay light, and a missing extra is one line saying how to get it.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import numpy as np
import torch

from lldiff_cli.checkpoints import load_model, shipped_models
from lldiff_cli.enhance import EnhanceSettings, enhance_image, in_precision
from lldiff_cli.errors import ImageReadError, LldiffError
from lldiff_cli.images import IMAGE_EXTENSIONS, is_image_file, read_image, to_uint8, write_like

GRADIO_HINT = 'lldiff app needs its extra: pip install "lldiff[app]"'
# The page shows the before / after pair at most this many pixels a side (a 24-megapixel photo
# is 72 MB of pixels for the browser, twice); the download is always full size.
PREVIEW_SIDE = 1600
# Above this a photo is refused with a message: 50 megapixels is a large camera's photo, and 1.2 GB
# of float32 pixels in and as much out; at the 13 s per megapixel a 1800x1200 photo took on a busy
# 2-core CPU, some 10 minutes (`lldiff enhance` has no cap; a GPU is far faster).
MAX_MEGAPIXELS = 50.0
MAX_FILE_SIZE = "500mb"  # Gradio refuses larger uploads in the page itself


class Outcome(NamedTuple):
    """What the page shows for one upload.

    images: (before, after) previews, HxWx3 uint8, longest side at most PREVIEW_SIDE; None on failure.
    path: the enhanced photo at full size, as `lldiff enhance` writes it; None on failure.
    message: what happened, or what was wrong with the input.
    """

    images: Optional[tuple[np.ndarray, np.ndarray]]
    path: Optional[Path]
    message: str


def parse_exposure(value: Optional[float]) -> Optional[float]:
    """The page's and the API's exposure -> EnhanceSettings.exposure: 0 (or None) is auto (None);
    else a target mean brightness in (0, 1)."""
    if value is None or value == 0:
        return None
    if not 0 < value < 1:
        raise LldiffError(f"exposure must be 0 (auto) or a target mean brightness in (0, 1), got {value:g}")
    return float(value)


def enhance_upload(path: Path | str, model, settings: EnhanceSettings, device: torch.device, out_dir: Path, *,
                   max_pixels: int = int(MAX_MEGAPIXELS * 1e6),
                   on_progress: Optional[Callable[[int, int], None]] = None) -> Outcome:
    """Enhance the photo at ``path`` (any format and size `lldiff enhance` reads) with ``model``
    (loaded, on ``device``) into ``out_dir``/NAME_lldiff.EXT, the input's format.

    ``on_progress(done, total)`` is called after each model call (one per tile batch; see
    tiling.enhance_tensor's ``on_tile``). LldiffError (an unreadable file, a photo over
    ``max_pixels``, bad settings) and running out of memory come back as the message.
    """
    path = Path(path)
    started = time.perf_counter()
    try:
        if not is_image_file(path):
            raise LldiffError(f"{path.name}: not a photo lldiff reads; it takes {', '.join(IMAGE_EXTENSIONS)}")
        _refuse_large(path.name, _stored_pixels(path), max_pixels)  # before decoding it
        settings = settings.resolve(model, device)  # a step count the model lacks: a message
        image = read_image(path)
        height, width = image.size
        _refuse_large(path.name, height * width, max_pixels)
        out = enhance_image(model, image.rgb, settings, device, on_tile=on_progress)
        target = Path(out_dir) / f"{path.stem}_lldiff{path.suffix.lower()}"
        write_like(target, out, image)
    except ImageReadError as exc:  # its message leads with the upload's full temporary path
        return Outcome(None, None, f"{path.name}: {exc.reason}")
    except LldiffError as exc:
        return Outcome(None, None, str(exc))
    except (MemoryError, torch.cuda.OutOfMemoryError):
        return Outcome(None, None, f"{path.name}: out of memory while enhancing it; try a smaller photo")
    seconds = time.perf_counter() - started
    exposure = "auto" if settings.exposure is None else f"{settings.exposure:g}"
    message = (f"{path.name}: {width}x{height} enhanced in {seconds:.1f} s (exposure {exposure}, {settings.steps} steps, "
               f"seed {settings.seed}); the download is full size, with the photo's metadata")
    return Outcome((preview(image.rgb), preview(out)), target, message)


def _refuse_large(name: str, pixels: Optional[int], max_pixels: int) -> None:
    if pixels is not None and pixels > max_pixels:
        raise LldiffError(f"{name}: {pixels / 1e6:.0f} megapixels is over this page's limit of "
                          f"{max_pixels / 1e6:g}; `lldiff enhance` takes any size (or start the app "
                          "with a larger --max-megapixels)")


def _stored_pixels(path: Path) -> Optional[int]:
    """Width x height from the file's header, without decoding it; None when Pillow cannot tell
    (read_image then names the problem). A decompression bomb counts as too large."""
    from PIL import Image as PILImage

    from lldiff_cli.images import MAX_PIXELS, _register_heif

    _register_heif()  # so that HEIC / HEIF headers are read too
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            with PILImage.open(path) as im:
                return im.width * im.height
    except PILImage.DecompressionBombError:
        return MAX_PIXELS + 1
    except Exception:  # not an image, truncated ...: read_image says which
        return None


def preview(rgb: torch.Tensor, side: int = PREVIEW_SIDE) -> np.ndarray:
    """1x3xHxW [0, 1] -> HxWx3 uint8, shrunk (Lanczos) to at most ``side`` pixels a side."""
    from PIL import Image as PILImage

    im = PILImage.fromarray(to_uint8(rgb))
    im.thumbnail((side, side), PILImage.LANCZOS)
    return np.asarray(im)


class Models:
    """The models the page offers: the shipped cards by short name, plus ``spec`` when it is a
    file (a card or checkpoint); each loaded onto ``device`` once, on first use."""

    def __init__(self, spec: Optional[str | Path], device: torch.device, precision: str):
        self.device, self.precision = device, precision
        self.choices = sorted(shipped_models())
        self.default = "default" if spec is None else str(spec)
        if self.default not in self.choices:
            self.choices.append(self.default)
        self._loaded: dict[str, torch.nn.Module] = {}
        self._lock = threading.Lock()  # the page's events run in threads

    def __getitem__(self, name: str):
        if name not in self.choices:
            raise LldiffError(f"no model {name!r} here; choose one of {', '.join(self.choices)}")
        with self._lock:
            if name not in self._loaded:
                model = load_model(name, map_location=self.device).to(self.device).eval()
                self._loaded[name] = in_precision(model, self.precision)
            return self._loaded[name]


def require_gradio():
    """The gradio module, with its telemetry off; LldiffError with the one-line install hint without it."""
    # Set before the import: Gradio and huggingface_hub read them to decide whether to phone home.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    try:
        import gradio
    except ImportError:
        raise LldiffError(GRADIO_HINT) from None
    return gradio


def build_app(models: Models, work_dir: Path, *, max_pixels: int = int(MAX_MEGAPIXELS * 1e6)):
    """The page (a gradio.Blocks): drop a photo, see before / after on a slider, download the
    result; and the API endpoint ``/enhance`` (image, exposure: 0 auto) -> the enhanced image.
    The results are written under ``work_dir`` (Gradio serves copies of them from its cache)."""
    gr = require_gradio()
    start_steps = models[models.default].config.steps  # loads the starting model: a bad one fails here
    counter = itertools.count()

    def run(path, name, exposure, steps, seed, progress) -> Outcome:
        if path is None:
            return Outcome(None, None, "drop a photo above first")
        try:
            model = models[name]
            settings = EnhanceSettings(exposure=parse_exposure(exposure), seed=int(seed or 0),
                                       steps=int(steps) if steps else None, precision=models.precision)
        except LldiffError as exc:
            return Outcome(None, None, str(exc))
        out_dir = Path(work_dir) / str(next(counter))  # a folder per result: same-named uploads never collide
        report = None
        if progress is not None:
            def report(done, total):
                progress((done, total), desc="enhancing", unit="tiles")
        return enhance_upload(path, model, settings, models.device, out_dir, max_pixels=max_pixels,
                              on_progress=report)

    def on_page(path, name, exposure, steps, seed, progress=gr.Progress()):
        result = run(path, name, exposure, steps, seed, progress)
        return result.images, None if result.path is None else str(result.path), result.message

    def on_api(image, exposure):
        try:
            value = float(exposure if exposure is not None else 0)
        except (TypeError, ValueError):
            raise gr.Error(f"exposure must be a number (0: auto), got {exposure!r}", print_exception=False) from None
        result = run(image, models.default, value, None, 0, None)
        if result.path is None:
            raise gr.Error(result.message, print_exception=False)  # the caller's mistake, not a bug
        return str(result.path)

    def on_model(name):
        try:
            return gr.update(value=models[name].config.steps)
        except LldiffError as exc:
            gr.Warning(str(exc))
            return gr.update()

    megapixels = f"{max_pixels / 1e6:g}"
    with gr.Blocks(title="lldiff", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown("## lldiff: make a dark photo look right\n"
                    f"Drop a photo (PNG, JPEG, TIFF, BMP, WebP or HEIC, up to {megapixels} megapixels). "
                    "Drag the slider to compare; download the result at full size, with the photo's metadata.")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                photo = gr.File(label="Dark photo", file_types=list(IMAGE_EXTENSIONS), type="filepath",
                                elem_id="photo")
                model = gr.Dropdown(models.choices, value=models.default, label="Model", elem_id="model")
                exposure = gr.Slider(0, 0.95, value=0, step=0.01, label="Exposure",
                                     info="0: auto, the model's own choice; else the target mean brightness",
                                     elem_id="exposure")
                with gr.Row():
                    steps = gr.Number(value=start_steps, precision=0, minimum=1,
                                      label="Steps", elem_id="steps")
                    seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                button = gr.Button("Enhance", variant="primary", elem_id="enhance")
            with gr.Column(scale=2):
                slider = gr.ImageSlider(label="Before / after", type="numpy", interactive=False, max_height=640,
                                        elem_id="before-after")
                message = gr.Markdown(elem_id="message")
                download = gr.File(label="Enhanced photo, full size", interactive=False, elem_id="download")
        # One enhancement at a time, from the page or the API: the model and the CPU are shared.
        gr.on([photo.upload, button.click], on_page, [photo, model, exposure, steps, seed],
              [slider, download, message], api_visibility="private", concurrency_id="enhance",
              concurrency_limit=1)
        model.change(on_model, model, steps, api_visibility="private")
        # The API: /enhance (image, exposure) -> image, on hidden components, for gradio_client.
        api_image = gr.File(label="image", type="filepath", visible=False)
        api_exposure = gr.Number(label="exposure", value=0, visible=False)
        api_result = gr.Image(label="enhanced", type="filepath", visible=False)
        api_button = gr.Button(visible=False)
        api_button.click(on_api, [api_image, api_exposure], api_result, api_name="enhance",
                         api_description="Enhance a dark photo with the app's model. exposure: 0 is auto, "
                                         "else the target mean brightness in (0, 1).",
                         concurrency_id="enhance", concurrency_limit=1)
    return page


def launch(page, *, host: str = "127.0.0.1", port: int = 7860) -> str:
    """Serve ``page`` in a background thread; returns its local URL. Never a share link, no
    telemetry, no server-side rendering (it needs Node). LldiffError when the port is taken."""
    try:
        page.queue(default_concurrency_limit=1).launch(
            server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=True,
            quiet=True, show_error=True, ssr_mode=False, max_file_size=MAX_FILE_SIZE, footer_links=["api"])
    except OSError as exc:
        # Gradio's words name its own parameters and variables, not this command's options.
        raise LldiffError(f"cannot serve on {host}:{port}: the port is taken, or the address is not this "
                          "machine's; pass another --port or --host") from None
    return page.local_url
