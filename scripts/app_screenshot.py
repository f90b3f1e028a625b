"""Drive `lldiff app` in headless Chromium as a person would: open the page, drop a photo in, wait
for the result, download it; then save the page's screenshot (docs/app.png, the README's).

    python scripts/app_screenshot.py [--photo sample_images/coffee.png] [--out docs/app.png]

The browser is Debian's Chromium (scripts/install_chromium.sh), driven through playwright's
Python package: playwright's own browser download is never used. tests/test_app.py drives the
page with these functions.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from lldiff_cli.errors import LldiffError, run_script

ROOT = Path(__file__).resolve().parent.parent
# Without the background-networking flags Chromium's own connections (updates, field trials) go
# out and are refused here; a fresh profile per launch is playwright's own doing.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def find_chromium() -> str | None:
    """$LLDIFF_CHROMIUM, else the first Chromium on the PATH (Debian's is /usr/bin/chromium); None without one."""
    if os.environ.get("LLDIFF_CHROMIUM"):
        return os.environ["LLDIFF_CHROMIUM"]
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def open_browser(playwright, executable: str):
    """Headless Chromium at ``executable``, in a fresh profile. Chromium puts a Unix socket under
    TMPDIR, and such a path may be at most 107 bytes: under a long TMPDIR (some machines', CI's)
    it aborts ("Socket path too long"), so it gets /tmp where there is one."""
    env = {**os.environ, "TMPDIR": "/tmp"} if os.path.isdir("/tmp") else None
    return playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS, env=env)


def enhance_in_page(page, url: str, photo: Path, download_dir: Path, timeout_s: float = 120) -> tuple[Path, str]:
    """Open the app at ``url`` in ``page``, drop ``photo`` on it and wait for the result; returns
    (the full-size download, saved in ``download_dir``; the page's message)."""
    page.goto(url)
    page.locator("#photo input[type=file]").set_input_files(str(photo))  # an upload enhances at once
    link = page.locator("#download a[download]").first
    link.wait_for(timeout=timeout_s * 1000)
    with page.expect_download() as info:
        link.click()
    target = Path(download_dir) / info.value.suggested_filename
    info.value.save_as(target)
    return target, page.locator("#message").inner_text()


def foreign_requests(urls: list[str], url: str) -> list[str]:
    """The ``urls`` a page requested that are not the app's own (nor data: / blob:): none may be."""
    own = urlsplit(url).netloc
    return [u for u in urls if urlsplit(u).scheme in ("http", "https", "ws", "wss") and urlsplit(u).netloc != own]


def save_screenshot(page, path: Path) -> None:
    """The page as a 256-colour PNG, dithered so the photo keeps its gradients: a small file for the README."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))
    with Image.open(path) as shot:
        rgb = shot.convert("RGB")
    palette = rgb.quantize(256, method=Image.Quantize.MEDIANCUT)
    rgb.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photo", type=Path, default=ROOT / "sample_images" / "coffee.png")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "app.png")
    parser.add_argument("--model", default=None, help="as lldiff app --model (default: the default model)")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from lldiff_cli.app import Models, build_app, launch
    from lldiff_cli.device import pick_device, pick_precision

    chromium = find_chromium()
    if chromium is None:
        raise LldiffError("no Chromium found: run scripts/install_chromium.sh, or set LLDIFF_CHROMIUM")
    device = pick_device("auto")
    with tempfile.TemporaryDirectory() as work:
        app = build_app(Models(args.model, device, pick_precision("auto", device)), Path(work) / "results")
        url = launch(app, port=args.port)
        try:
            with sync_playwright() as playwright:
                browser = open_browser(playwright, chromium)
                page = browser.new_page(viewport={"width": 1100, "height": 760})
                result, message = enhance_in_page(page, url, args.photo, Path(work))
                save_screenshot(page, args.out)
                browser.close()
            downloaded = f"{result.name}, {result.stat().st_size // 1024} KB"
        finally:
            app.close()
    print(f"{message}\ndownloaded {downloaded}; screenshot: {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    run_script(main)
