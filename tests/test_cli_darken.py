"""`lldiff darken` through the command line: odd files, resuming, errors, help speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from lldiff_cli import darken as dk
from lldiff_cli.cli import app
from conftest import pil_open

runner = CliRunner()
RNG = np.random.default_rng(0)


def rgb8(h=6, w=8):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def lldiff(*args: str):
    # Rich prints to stderr; typer's CliRunner mixes stderr into result.output.
    return runner.invoke(app, [str(a) for a in args])


def plain_folder(root: Path, names) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        PILImage.fromarray(rgb8()).save(root / name)
    return root


def odd_folder(root: Path) -> Path:
    """Good files of every odd kind, and bad ones."""
    root.mkdir()
    PILImage.fromarray(rgb8()).save(root / "good.png")
    cv2.imwrite(str(root / "deep16.png"), RNG.integers(0, 65536, (6, 8, 3), dtype=np.uint16))
    PILImage.fromarray(RNG.integers(0, 256, (6, 8, 4), dtype=np.uint8), "RGBA").save(root / "rgba.png")
    PILImage.fromarray(RNG.integers(0, 256, (6, 8), dtype=np.uint8), "L").save(root / "grey.png")
    PILImage.fromarray(rgb8(16, 16)).convert("CMYK").save(root / "cmyk.jpg", quality=95)
    exif = PILImage.Exif()
    exif[0x0112] = 6
    PILImage.fromarray(rgb8(4, 8)).save(root / "rotated.jpg", exif=exif)
    PILImage.fromarray(rgb8(64, 64)).save(root / "cut.png")
    (root / "cut.png").write_bytes((root / "cut.png").read_bytes()[:200])
    (root / "zero.png").write_bytes(b"")
    (root / "text.jpg").write_text("this is not a JPEG")
    (root / "readme.txt").write_text("skipped quietly")
    return root


GOOD = ["cmyk.jpg", "deep16.png", "good.png", "grey.png", "rgba.png", "rotated.jpg"]
BAD = ["cut.png", "text.jpg", "zero.png"]


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".") or ".part" in p.name]


def manifest_sources(out: Path) -> list[str]:
    return [json.loads(line)["source"] for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_odd_and_bad_files(tmp_path):
    src, out = odd_folder(tmp_path / "in"), tmp_path / "out"
    result = lldiff("darken", src, out, "--quiet", "--noise", "--progressive", "--steps", "2")
    assert result.exit_code == 1, result.output
    assert "6 done, 0 skipped, 3 failed" in result.output
    for name in BAD:
        assert f"failed {name}" in result.output
    assert "empty file" in result.output and "not a recognised image" in result.output
    assert "Traceback" not in result.output
    for name in GOOD:
        assert (out / "low" / name).is_file() and (out / "high" / name).is_file()
    for name in BAD:
        assert not list(out.rglob(Path(name).stem + "*"))
    assert not leftovers(out)
    assert manifest_sources(out) == GOOD

    assert cv2.imread(str(out / "low/deep16.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    assert pil_open(out / "low/rgba.png").mode == "RGBA"
    assert pil_open(out / "low/rotated.jpg").size == (4, 8)  # EXIF applied: now portrait
    assert pil_open(out / "steps/rotated_t02.jpg").size == (4, 8)


def test_interrupted_batch_resumes(tmp_path, monkeypatch):
    src, out = plain_folder(tmp_path / "in", ["a.png", "b.png", "c.png", "d.png"]), tmp_path / "out"
    real, calls = dk.render, []

    def render_then_interrupt(image, record):
        calls.append(record["source"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(image, record)

    monkeypatch.setattr(dk, "render", render_then_interrupt)
    result = lldiff("darken", src, out, "-q")
    assert result.exit_code == 130 and "interrupted" in result.output
    assert manifest_sources(out) == ["a.png", "b.png"]
    assert not (out / "low/c.png").exists() and not leftovers(out)

    monkeypatch.setattr(dk, "render", real)
    result = lldiff("darken", src, out, "-q")
    assert result.exit_code == 0, result.output
    assert "2 done, 2 skipped, 0 failed" in result.output
    assert manifest_sources(out) == ["a.png", "b.png", "c.png", "d.png"]

    fresh = tmp_path / "fresh"
    assert lldiff("darken", src, fresh, "-q").exit_code == 0
    for name in ["a.png", "d.png"]:
        assert (out / "low" / name).read_bytes() == (fresh / "low" / name).read_bytes()


def test_rebuild_from_manifest_through_the_cli(tmp_path):
    src = plain_folder(tmp_path / "in", ["a.png", "b.png"])
    assert lldiff("darken", src, tmp_path / "one", "-q", "--noise", "--seed", "5").exit_code == 0
    result = lldiff("darken", src, tmp_path / "two", "-q", "--from-manifest", tmp_path / "one/manifest.jsonl")
    assert result.exit_code == 0, result.output
    for name in ["low/a.png", "high/b.png", "manifest.jsonl"]:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    result = lldiff("darken", src, tmp_path / "three", "--noise", "--from-manifest", tmp_path / "one/manifest.jsonl")
    assert result.exit_code == 2 and "--from-manifest" in result.output
    (tmp_path / "empty.jsonl").write_text("")
    result = lldiff("darken", src, tmp_path / "four", "--from-manifest", tmp_path / "empty.jsonl")
    assert result.exit_code == 2 and "has no records" in result.output
    assert not (tmp_path / "four").exists()


def test_scale_mode_and_alias(tmp_path):
    src = plain_folder(tmp_path / "in", ["a.png"])
    result = lldiff("synthesize-dark", src, tmp_path / "out", "--mode", "scale", "--factor", "0.5", "--format", "bmp")
    assert result.exit_code == 0, result.output
    high = np.array(pil_open(tmp_path / "out/high/a.bmp"), dtype=float)
    low = np.array(pil_open(tmp_path / "out/low/a.bmp"), dtype=float)
    assert np.abs(low - high / 2).max() <= 0.5


def test_one_image_file_as_the_input(tmp_path):
    src = plain_folder(tmp_path / "in", ["a.png", "b.png"])
    result = lldiff("darken", src / "b.png", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == \
        ["high/b.png", "low/b.png"]


def test_fixed_lv_parameters(tmp_path):
    src = plain_folder(tmp_path / "in", ["a.png"])
    result = lldiff("darken", src, tmp_path / "out", "-q", "--alpha", "1", "--beta", "0.5,0.5", "--gamma", "2")
    assert result.exit_code == 0, result.output
    rec = json.loads((tmp_path / "out/manifest.jsonl").read_text())
    assert rec["params"] == {"alpha": 1.0, "beta": 0.5, "gamma": 2.0}


def test_fixed_noise_parameters(tmp_path):
    src = plain_folder(tmp_path / "in", ["a.png"])
    result = lldiff("darken", src, tmp_path / "out", "-q", "--noise", "--gain", "0.001,0.001",
                    "--read-noise", "0.002,0.002")
    assert result.exit_code == 0, result.output
    noise = json.loads((tmp_path / "out/manifest.jsonl").read_text())["noise"]
    assert noise["gain"] == pytest.approx(0.001) and noise["read_noise"] == pytest.approx(0.002)


def error_line(result) -> str:
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def test_missing_input_folder_is_one_error_line(tmp_path):
    result = lldiff("darken", tmp_path / "nope", tmp_path / "out")
    assert result.exit_code == 2
    assert "input folder does not exist" in error_line(result)
    (tmp_path / "m.jsonl").write_text('{"source": "a.png"}\n')
    result = lldiff("darken", tmp_path / "nope", tmp_path / "out", "--from-manifest", tmp_path / "m.jsonl")
    assert result.exit_code == 2
    assert "input folder does not exist" in error_line(result)
    result = lldiff("darken", tmp_path, tmp_path / "out", "--from-manifest", tmp_path / "nope.jsonl")
    assert result.exit_code == 2
    assert "cannot read manifest" in error_line(result)


def test_output_in_input_folder_is_refused(tmp_path):
    src = plain_folder(tmp_path / "in", ["a.png"])
    result = lldiff("darken", src, src)
    assert result.exit_code == 2
    assert "output folder is the input folder" in error_line(result)
    assert sorted(p.name for p in src.iterdir()) == ["a.png"]


def test_unwritable_output_folder_is_one_error_line(tmp_path):
    src = plain_folder(tmp_path / "in", ["a.png"])
    (tmp_path / "file").write_text("a file, not a folder")
    result = lldiff("darken", src, tmp_path / "file" / "out")
    assert result.exit_code == 2
    assert "cannot create output folder" in error_line(result)


@pytest.mark.parametrize("args,message", [
    (["--mode", "sepia"], "lv"),
    (["--alpha", "0.5,2"], "alpha range"),
    (["--gamma", "a,b"], "MIN,MAX"),
    (["--mode", "scale", "--gamma", "2,3"], "--gamma"),
    (["--steps", "4"], "--progressive"),
    (["--gain", "1e-3,2e-3"], "--noise"),
    (["--format", "gif"], "allowed"),
])
def test_bad_options_fail_clearly(tmp_path, args, message):
    src = plain_folder(tmp_path / "in", ["a.png"])
    result = lldiff("darken", src, tmp_path / "out", *args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("argv", [["--help"], ["darken", "--help"], ["synthesize-dark", "--help"]])
def test_help_does_not_import_torch(argv):
    """Help stays fast because it never imports torch (a wall-clock bound here would be flaky
    on a loaded machine: the import is what takes the seconds)."""
    code = (
        "import sys\n"
        "from lldiff_cli.cli import app\n"
        "try:\n"
        f"    app({argv!r}, prog_name='lldiff')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "Usage" in done.stdout
    assert done.stdout.split("TORCH")[1].strip() == "False"


def test_names_with_brackets_are_printed_as_they_are(tmp_path):
    src = tmp_path / "in [x]"
    src.mkdir()
    (src / "IMG [night].jpg").write_text("not a JPEG")
    result = lldiff("darken", src, tmp_path / "out", "-q")
    assert result.exit_code == 1 and "failed IMG [night].jpg" in result.output
    result = lldiff("darken", tmp_path / "gone [y]", tmp_path / "out")
    assert result.exit_code == 2 and "gone [y]" in error_line(result)


def test_a_greyscale_source_stays_greyscale_with_mono_sensor_noise(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    PILImage.fromarray(np.full((32, 32), 160, dtype=np.uint8), "L").save(src / "ir.png")
    args = ["-q", "--noise", "--progressive", "--steps", "3", "--seed", "1"]
    assert lldiff("darken", src, tmp_path / "one", *args).exit_code == 0
    for name in ["low/ir.png", "high/ir.png", "steps/ir_t01.png"]:
        assert pil_open(tmp_path / "one" / name).mode == "L", name
    result = lldiff("darken", src, tmp_path / "two", "-q", "--from-manifest", tmp_path / "one/manifest.jsonl")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "one/low/ir.png").read_bytes() == (tmp_path / "two/low/ir.png").read_bytes()


# --- issue 22: a run never damages the user's files -------------------------------------


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("source, extra", [
    ("low", []), ("high", ["--overwrite"]), ("low", ["--format", "bmp"]), ("high/a.jpg", []),
    ("low/a.jpg", ["--overwrite"]), ("steps", ["--progressive"]),
])
def test_darken_into_the_dataset_its_input_lies_in_is_refused(tmp_path, source, extra):
    """`lldiff darken ds/low ds` would write each darkened copy over its source, and a second
    --overwrite run would put the dark copy into high/: refused before any work."""
    photos = plain_folder(tmp_path / "photos", ["a.jpg", "b.jpg"])
    ds = tmp_path / "ds"
    assert lldiff("darken", photos, ds, "-q", "--progressive", "--steps", "2").exit_code == 0
    before = snapshot(ds)
    result = lldiff("darken", ds / source, ds, *extra)
    assert result.exit_code == 2
    line = error_line(result)
    folder = ds / source.split("/")[0]
    assert str(folder) in line and "overwritten" in line, line
    assert snapshot(ds) == before


def test_darken_refuses_an_output_folder_linked_to_its_input(tmp_path):
    photos = plain_folder(tmp_path / "photos", ["a.png"])
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "high").symlink_to(photos, target_is_directory=True)
    before = snapshot(photos)
    result = lldiff("darken", photos, tmp_path / "ds")
    assert result.exit_code == 2 and "overwritten" in error_line(result)
    assert snapshot(photos) == before and not (tmp_path / "ds" / "low").exists()


def test_from_manifest_refuses_records_that_would_write_over_their_sources(tmp_path):
    """Sources named by a manifest are not filtered by a listing: a record whose output is
    another record's source (here IN holds OUT) is refused."""
    root = plain_folder(tmp_path / "root", ["a.png"])
    assert lldiff("darken", root, root / "ds", "-q").exit_code == 0
    record = json.loads((root / "ds/manifest.jsonl").read_text())
    moved = dict(record, source="ds/high/a.png")  # high/a.png is written by the first record
    (tmp_path / "m.jsonl").write_text(json.dumps(record) + "\n" + json.dumps(dict(moved, low="low/b.png", high="high/b.png")) + "\n")
    before = snapshot(root)
    result = lldiff("darken", root, root / "ds", "--overwrite", "--from-manifest", tmp_path / "m.jsonl")
    assert result.exit_code == 2
    line = error_line(result)
    assert "high/a.png" in line and "overwritten" in line, line
    assert snapshot(root) == before


@pytest.mark.parametrize("key, value, shown", [
    ("gamma", -3, "gamma -3"), ("beta", float("nan"), "beta nan"), ("alpha", 1.5, "alpha 1.5"),
])
def test_from_manifest_refuses_bad_parameters_before_writing(tmp_path, key, value, shown):
    src = plain_folder(tmp_path / "in", ["a.png", "b.png"])
    assert lldiff("darken", src, tmp_path / "one", "-q").exit_code == 0
    lines = (tmp_path / "one/manifest.jsonl").read_text().splitlines()
    bad = json.loads(lines[1])
    bad["params"][key] = value
    (tmp_path / "m.jsonl").write_text(lines[0] + "\n" + json.dumps(bad) + "\n")
    result = lldiff("darken", src, tmp_path / "two", "--from-manifest", tmp_path / "m.jsonl")
    assert result.exit_code == 2
    line = error_line(result)
    assert "m.jsonl line 2" in line and shown in line, line
    assert not (tmp_path / "two").exists()


@pytest.mark.parametrize("gain", [0, -0.001])
def test_from_manifest_refuses_a_gain_that_is_not_positive(tmp_path, gain):
    """It used to be a traceback from torch.poisson that left an empty manifest behind."""
    src = plain_folder(tmp_path / "in", ["a.png"])
    assert lldiff("darken", src, tmp_path / "one", "-q", "--noise").exit_code == 0
    record = json.loads((tmp_path / "one/manifest.jsonl").read_text())
    record["noise"]["gain"] = gain
    (tmp_path / "m.jsonl").write_text(json.dumps(record) + "\n")
    result = lldiff("darken", src, tmp_path / "two", "--from-manifest", tmp_path / "m.jsonl")
    assert result.exit_code == 2
    line = error_line(result)
    assert "m.jsonl line 1" in line and f"gain {gain:g}" in line, line
    assert not (tmp_path / "two").exists()


def test_from_manifest_refuses_two_records_with_one_output(tmp_path):
    src = plain_folder(tmp_path / "in", ["a.png", "a.jpg"])
    assert lldiff("darken", src, tmp_path / "one", "-q").exit_code == 0
    lines = (tmp_path / "one/manifest.jsonl").read_text().splitlines()
    jpg = json.loads(lines[0])
    assert jpg["source"] == "a.jpg"
    jpg["low"], jpg["high"] = "low/a.png", "high/a.png"  # the outputs of a.png's record
    (tmp_path / "m.jsonl").write_text(json.dumps(jpg) + "\n" + lines[1] + "\n")
    result = lldiff("darken", src, tmp_path / "two", "--from-manifest", tmp_path / "m.jsonl")
    assert result.exit_code == 2
    line = error_line(result)
    assert "line 1" in line and "line 2" in line and "low/a.png" in line, line
    assert not (tmp_path / "two").exists()


def test_from_manifest_refuses_a_manifest_cut_short(tmp_path):
    src = plain_folder(tmp_path / "in", ["a.png", "b.png"])
    assert lldiff("darken", src, tmp_path / "one", "-q").exit_code == 0
    lines = (tmp_path / "one/manifest.jsonl").read_text().splitlines()
    (tmp_path / "m.jsonl").write_text(lines[0] + "\n" + lines[1][:30])
    result = lldiff("darken", src, tmp_path / "two", "--from-manifest", tmp_path / "m.jsonl")
    assert result.exit_code == 2
    assert "m.jsonl line 2" in error_line(result)
    assert not (tmp_path / "two").exists()


def test_from_manifest_refuses_a_binary_file(tmp_path):
    src = plain_folder(tmp_path / "in", ["a.png"])
    (tmp_path / "m.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    result = lldiff("darken", src, tmp_path / "out", "--from-manifest", tmp_path / "m.jsonl")
    assert result.exit_code == 2
    assert "is not a manifest: a binary file" in error_line(result)
    assert not (tmp_path / "out").exists()


def test_a_folder_where_an_output_goes_is_a_failure_not_a_skip(tmp_path):
    src = plain_folder(tmp_path / "in", ["a.png", "b.png"])
    out = tmp_path / "out"
    assert lldiff("darken", src, out, "-q").exit_code == 0
    (out / "low/a.png").unlink()
    (out / "low/a.png").mkdir()  # a folder in the way, the record still in the manifest
    before = snapshot(out)
    for extra in ([], ["--overwrite"]):
        result = lldiff("darken", src, out, "-q", *extra)
        assert result.exit_code == 1, result.output
        assert "1 failed" in result.output and "failed a.png" in result.output
        assert "a folder is in the way" in result.output and str(out / "low" / "a.png") in result.output.replace("\n", "")
        assert snapshot(out).keys() == before.keys() and (out / "high/a.png").read_bytes() == before["high/a.png"]


def test_unsupported_files_are_counted_in_the_summary(tmp_path):
    src = plain_folder(tmp_path / "in", ["a.png"])
    PILImage.fromarray(rgb8()).save(src / "anim.gif")
    (src / "notes.txt").write_text("not an image")
    (src / ".hidden.png.part").write_text("our own temporary file")
    result = lldiff("darken", src, tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    assert "1 done" in result.output
    text = result.output.replace("\n", " ")
    assert "left out 2 files" in text and "anim.gif" in text and "notes.txt" in text
    assert ".hidden" not in text
