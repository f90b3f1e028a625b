"""`lldiff app`: the function behind the page on a tiny model, the command without its extra, and
the page itself in headless Chromium with the /enhance API (the default model, on the CPU)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from typer.testing import CliRunner

from lldiff_cli import app as A
from lldiff_cli.cli import app as cli
from lldiff_cli.enhance import EnhanceSettings, enhance_folder, plan_folder
from lldiff_cli.images import read_image
from conftest import load_script, pil_open

# Gradio's queue calls pandas in ways pandas 3 deprecates: not ours to fix.
pytestmark = [pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]
CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parent.parent


def dark_photo(path: Path, size=(120, 160), exif_model="Test Camera") -> Path:
    """The coffee cup of sample_images/ at 1/8 of its light, in ``path``'s format, with an EXIF
    camera model."""
    with PILImage.open(ROOT / "sample_images" / "coffee.png") as im:
        photo = im.convert("RGB").resize(size[::-1], PILImage.LANCZOS)
    exif = PILImage.Exif()
    exif[0x0110] = exif_model
    PILImage.fromarray(np.asarray(photo) // 8).save(path, quality=95, exif=exif.tobytes())
    return path


def test_an_upload_is_enhanced_as_lldiff_enhance_writes_it(tmp_path, tiny_model):
    (tmp_path / "in").mkdir()
    photo = dark_photo(tmp_path / "in" / "night.jpg")
    settings = EnhanceSettings(seed=3, exposure=0.3)
    result = A.enhance_upload(photo, tiny_model, settings, CPU, tmp_path / "page")
    assert result.path == tmp_path / "page" / "night_lldiff.jpg", result.message
    assert result.message.startswith("night.jpg: 160x120 enhanced in") and "exposure 0.3" in result.message
    # The same pixels and metadata as the command line's output, same settings.
    inputs = plan_folder(tmp_path / "in", tmp_path / "cli")
    enhance_folder(tiny_model, inputs, tmp_path / "cli", device=CPU, settings=settings)
    np.testing.assert_array_equal(np.asarray(pil_open(result.path)), np.asarray(pil_open(tmp_path / "cli" / "night.jpg")))
    assert pil_open(result.path).getexif()[0x0110] == "Test Camera"
    before, after = result.images
    assert before.shape == after.shape == (120, 160, 3) and before.dtype == np.uint8


def test_previews_are_shrunk_and_the_download_is_full_size(tmp_path, tiny_model):
    PILImage.fromarray(np.full((40, 90, 3), 20, np.uint8)).save(tmp_path / "wide.png")
    result = A.enhance_upload(tmp_path / "wide.png", tiny_model, EnhanceSettings(), CPU, tmp_path / "out")
    assert read_image(result.path).size == (40, 90)
    assert A.preview(read_image(result.path).rgb, side=30).shape == (13, 30, 3)


def test_progress_counts_the_tiles_of_a_tiled_photo(tmp_path, tiny_model):
    PILImage.fromarray(np.full((40, 56, 3), 20, np.uint8)).save(tmp_path / "big.png")
    settings = EnhanceSettings(tile=16, overlap=4, batch_size=2)
    calls = []
    result = A.enhance_upload(tmp_path / "big.png", tiny_model, settings, CPU, tmp_path / "out",
                              on_progress=lambda done, total: calls.append((done, total)))
    assert result.path is not None, result.message
    total = calls[-1][1]
    assert total > 2  # several tile batches
    assert calls == [(done, total) for done in range(1, total + 1)]  # each model call, up to the total
    calls.clear()
    A.enhance_upload(tmp_path / "big.png", tiny_model, EnhanceSettings(), CPU, tmp_path / "whole",
                     on_progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 1)]  # under the model's bound: untiled, one call


@pytest.mark.parametrize("name, content, settings, max_pixels, message", [
    ("notes.png", b"not a PNG at all", {}, 10**6, "notes.png: not a recognised image format"),
    ("notes.txt", b"hello", {}, 10**6, "notes.txt: not a photo lldiff reads; it takes .png"),
    ("empty.jpg", b"", {}, 10**6, "empty.jpg: empty file"),
    ("big.png", None, {}, 1000, "big.png: 0 megapixels is over this page's limit of 0.001"),
    ("ok.png", None, {"steps": 500}, 10**6, "steps"),  # the tiny model's schedule has 100
])
def test_bad_input_is_a_message_not_an_exception(tmp_path, tiny_model, name, content, settings, max_pixels, message):
    path = tmp_path / name
    if content is None:
        PILImage.fromarray(np.full((40, 30, 3), 20, np.uint8)).save(path)
    else:
        path.write_bytes(content)
    result = A.enhance_upload(path, tiny_model, EnhanceSettings(**settings), CPU, tmp_path / "out",
                              max_pixels=max_pixels)
    assert result.images is None and result.path is None
    assert message in result.message and str(tmp_path) not in result.message  # no temporary path shown
    assert not (tmp_path / "out").exists()


def test_a_huge_photo_is_refused_from_its_header_before_decoding(tmp_path, tiny_model, monkeypatch):
    PILImage.new("RGB", (4000, 3000)).save(tmp_path / "huge.png")  # 12 Mpx, a 40 kB file
    monkeypatch.setattr(A, "read_image", lambda path: pytest.fail("decoded a photo over the limit"))
    result = A.enhance_upload(tmp_path / "huge.png", tiny_model, EnhanceSettings(), CPU, tmp_path / "out",
                              max_pixels=10**7)
    assert result.message.startswith("huge.png: 12 megapixels is over this page's limit of 10")


@pytest.mark.parametrize("value, expected", [(0, None), (None, None), (0.3, 0.3)])
def test_exposure_zero_is_auto(value, expected):
    assert A.parse_exposure(value) == expected


@pytest.mark.parametrize("value", [-0.1, 1, 3])
def test_exposure_outside_zero_one_is_refused(value):
    with pytest.raises(A.LldiffError, match="exposure must be 0 .auto. or a target mean brightness in .0, 1."):
        A.parse_exposure(value)


def test_the_command_without_gradio_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now raises ImportError
    result = CliRunner().invoke(cli, ["app"])
    assert result.exit_code == 2
    assert result.output.strip() == 'error: lldiff app needs its extra: pip install "lldiff[app]"'


def test_app_help_imports_neither_torch_nor_gradio():
    code = ("import sys\nfrom lldiff_cli.cli import app\n"
            "try:\n    app(['app', '--help'], prog_name='lldiff')\nexcept SystemExit:\n    pass\n"
            "print('LOADED', sorted(m for m in ('torch', 'gradio') if m in sys.modules))\n")
    # The help's layout follows the console's width; a wide one keeps option names whole on any machine.
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert "--max-megapixels" in done.stdout and 'pip install "lldiff[app]"' in done.stdout
    assert done.stdout.split("LOADED")[1].strip() == "[]"


# --- the page in a browser, and the API, on the default model --------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app with the shipped default model, served on a free local port: (url, page)."""
    pytest.importorskip("gradio", reason='the app extra is not installed: pip install -e ".[app]"')
    page = A.build_app(A.Models(None, CPU, "float32"), tmp_path_factory.mktemp("results"))
    url = A.launch(page, port=free_port())
    yield url, page
    page.close()


@pytest.fixture(scope="module")
def browser_script():
    return load_script("scripts/app_screenshot.py")


def test_the_page_in_chromium_enhances_a_dropped_photo(tmp_path, served, browser_script):
    chromium = browser_script.find_chromium()
    if chromium is None:
        reason = "no Chromium: run scripts/install_chromium.sh (Debian's chromium package)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI installs it through make test")
        pytest.skip(reason)
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    url, _ = served
    photo = dark_photo(tmp_path / "dark.jpg")
    requested = []
    with sync_playwright() as playwright:
        browser = browser_script.open_browser(playwright, chromium)
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        page.on("request", lambda request: requested.append(request.url))
        download, message = browser_script.enhance_in_page(page, url, photo, tmp_path, timeout_s=120)
        browser_script.save_screenshot(page, tmp_path / "page.png")
        slider_images = page.locator("#before-after img").count()
        # A file that is no photo: a message in the page, which goes on working.
        (tmp_path / "notes.png").write_text("not a photo")
        page.goto(url)
        page.locator("#photo input[type=file]").set_input_files(str(tmp_path / "notes.png"))
        page.get_by_text("notes.png: not a recognised image format").wait_for(timeout=30_000)
        browser.close()
    assert message.startswith("dark.jpg: 160x120 enhanced in"), message
    assert slider_images == 2  # before and after
    assert download.name == "dark_lldiff.jpg"
    out, before = pil_open(download), pil_open(photo)
    assert out.size == before.size and out.format == "JPEG"
    assert out.getexif()[0x0110] == "Test Camera"  # the download keeps the photo's metadata
    assert np.asarray(out).mean() > 2 * np.asarray(before).mean()
    assert browser_script.foreign_requests(requested, url) == []  # nothing but the app itself
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_the_api_brightens_a_dark_photo_at_its_size(tmp_path, served):
    """The issue's bar: /enhance (image, exposure 0 = auto) on a dark 160x120 photo."""
    from gradio_client import Client, handle_file

    url, _ = served
    photo = dark_photo(tmp_path / "dark.png")
    client = Client(url, analytics_enabled=False, verbose=False, download_files=str(tmp_path / "client"))
    out = pil_open(client.predict(handle_file(str(photo)), 0, api_name="/enhance"))
    before = pil_open(photo)
    assert out.size == before.size == (160, 120)
    ratio = np.asarray(out).mean() / np.asarray(before).mean()
    assert ratio >= 2, ratio
    with pytest.raises(Exception, match="exposure must be 0 .auto. or a target mean brightness"):
        client.predict(handle_file(str(photo)), 1.5, api_name="/enhance")
    (tmp_path / "notes.png").write_text("not a photo")
    with pytest.raises(Exception, match="notes.png: not a recognised image format"):
        client.predict(handle_file(str(tmp_path / "notes.png")), 0, api_name="/enhance")
