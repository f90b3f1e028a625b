"""`lldiff enhance` through the command line, on a tiny random-weight model."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from typer.testing import CliRunner

from lldiff_cli.checkpoints import save_checkpoint
from lldiff_cli.cli import app
from lldiff_cli.errors import LldiffError
from lldiff_cli.images import read_image
from lldiff_cli.model import WaveletDiffusion
from tests.conftest import tiny_config
from conftest import pil_open

runner = CliRunner()


def lldiff(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    save_checkpoint(WaveletDiffusion(tiny_config()), path)
    return path


@pytest.fixture
def dark_folder(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "dark"
    (root / "sub").mkdir(parents=True)
    PILImage.fromarray(rng.integers(0, 60, (21, 30, 3), dtype=np.uint8)).save(root / "a.png")
    PILImage.fromarray(rng.integers(0, 60, (16, 16, 4), dtype=np.uint8), "RGBA").save(root / "b.png")
    PILImage.fromarray(rng.integers(0, 60, (9, 13, 3), dtype=np.uint8)).save(root / "sub" / "c.jpg")
    (root / "broken.jpg").write_text("not a jpeg")
    return root


def test_enhance_folder_any_size_keeps_names_alpha_and_reports_bad_files(tmp_path, checkpoint, dark_folder):
    out = tmp_path / "out"
    result = lldiff("enhance", dark_folder, out, "--model", checkpoint, "--recursive", "--quiet")
    assert result.exit_code == 1, result.output
    assert "broken.jpg" in result.output and "3 done" in result.output and "1 failed" in result.output
    assert read_image(out / "a.png").size == (21, 30)
    alpha_in, alpha_out = (np.asarray(pil_open(folder / "b.png"))[..., 3] for folder in (dark_folder, out))
    np.testing.assert_array_equal(alpha_out, alpha_in)
    assert read_image(out / "sub" / "c.jpg").size == (9, 13)
    assert not (out / "broken.jpg").exists()
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]


def test_enhance_into_a_folder_inside_its_input_never_enhances_its_outputs(tmp_path, checkpoint, dark_folder):
    out = dark_folder / "enhanced"
    for _ in range(2):
        result = lldiff("enhance", dark_folder, out, "--model", checkpoint, "--recursive", "--quiet")
        assert result.exit_code == 1, result.output  # broken.jpg
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == \
        ["a.png", "b.png", "sub/c.jpg"]
    assert "3 skipped" in result.output


def test_enhance_takes_one_image_file_as_its_input(tmp_path, checkpoint, dark_folder):
    result = lldiff("enhance", dark_folder / "a.png", tmp_path / "o", "--model", checkpoint, "--quiet")
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["a.png"]
    assert read_image(tmp_path / "o" / "a.png").size == (21, 30)
    (tmp_path / "notes.txt").write_text("not an image")
    result = lldiff("enhance", tmp_path / "notes.txt", tmp_path / "o2", "--model", checkpoint)
    assert result.exit_code == 2 and "notes.txt is not an image file" in result.output.replace("\n", "")
    result = lldiff("enhance", dark_folder / "a.png", dark_folder, "--model", checkpoint)  # would replace it
    assert result.exit_code == 2 and "output folder is the input folder" in result.output.replace("\n", "")
    (tmp_path / "empty").mkdir()
    result = lldiff("enhance", tmp_path / "empty", tmp_path / "o3", "--model", checkpoint)
    assert result.exit_code == 0 and "no images in" in result.output


def test_enhance_refuses_two_inputs_that_would_share_an_output(tmp_path, checkpoint, dark_folder):
    PILImage.fromarray(np.zeros((8, 8, 3), np.uint8)).save(dark_folder / "a.jpg")  # beside a.png
    result = lldiff("enhance", dark_folder, tmp_path / "o", "--model", checkpoint, "--format", "png")
    assert result.exit_code == 2
    assert "a.jpg and a.png would both be written to" in result.output.replace("\n", "")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_enhance_is_reproducible_and_resumes(tmp_path, checkpoint, dark_folder):
    args = ["--model", checkpoint, "--quiet", "--seed", "7", "--eta", "1"]
    lldiff("enhance", dark_folder, tmp_path / "o1", *args)
    lldiff("enhance", dark_folder, tmp_path / "o2", *args)
    a, b = read_image(tmp_path / "o1" / "a.png").rgb, read_image(tmp_path / "o2" / "a.png").rgb
    assert torch.equal(a, b)
    again = lldiff("enhance", dark_folder, tmp_path / "o1", *args)
    assert "0 done, 2 skipped" in again.output
    (tmp_path / "o1" / "a.png").write_bytes(b"stale")
    again = lldiff("enhance", dark_folder, tmp_path / "o1", *args, "--overwrite")
    assert "2 done, 0 skipped" in again.output
    assert torch.equal(read_image(tmp_path / "o1" / "a.png").rgb, b)


def test_enhance_fails_an_image_whose_output_place_holds_a_folder(tmp_path, checkpoint, dark_folder):
    """A folder where an output goes used to count as 'skipped', and nothing was written."""
    out = tmp_path / "o"
    (out / "a.png").mkdir(parents=True)
    for extra in ([], ["--overwrite"]):
        result = lldiff("enhance", dark_folder, out, "--model", checkpoint, "--quiet", *extra)
        assert result.exit_code == 1, result.output
        text = result.output.replace("\n", "")
        assert "failed a.png" in text and "a folder is in the way" in text and str(out / "a.png") in text
        assert (out / "a.png").is_dir() and (out / "b.png").is_file()


def test_enhance_counts_the_files_it_leaves_out_as_unsupported(tmp_path, checkpoint, dark_folder):
    PILImage.fromarray(np.zeros((8, 8, 3), np.uint8)).save(dark_folder / "anim.gif")
    result = lldiff("enhance", dark_folder, tmp_path / "o", "--model", checkpoint, "--quiet")
    assert result.exit_code == 1, result.output  # broken.jpg; the GIF is no failure
    text = result.output.replace("\n", " ")
    assert "1 failed" in text and "left out 1 file" in text and "anim.gif" in text
    assert "failed anim.gif" not in text


def test_enhance_self_ensemble_changes_the_output(tmp_path, checkpoint, dark_folder):
    lldiff("enhance", dark_folder, tmp_path / "o1", "--model", checkpoint, "--quiet")
    result = lldiff("enhance", dark_folder, tmp_path / "o4", "--model", checkpoint, "--quiet", "--ensemble", "4")
    assert result.exit_code == 1 and (tmp_path / "o4" / "a.png").exists()  # broken.jpg is reported
    a, b = read_image(tmp_path / "o1" / "a.png").rgb, read_image(tmp_path / "o4" / "a.png").rgb
    assert a.shape == b.shape and not torch.equal(a, b)


def test_enhance_precision_float32_and_bfloat16_agree(tmp_path, checkpoint, dark_folder):
    outs = {}
    for precision in ("float32", "bfloat16"):
        result = lldiff("enhance", dark_folder, tmp_path / precision, "--model", checkpoint, "--quiet",
                        "--precision", precision)
        assert result.exit_code == 1  # broken.jpg
        outs[precision] = np.asarray(pil_open(tmp_path / precision / "a.png"), dtype=float)
    difference = np.abs(outs["float32"] - outs["bfloat16"])
    assert 0 < difference.max() and difference.mean() < 2  # bfloat16 really ran, and stayed close


def test_enhance_options_reach_the_model(tmp_path, exposure_aware_model, dark_folder):
    checkpoint = tmp_path / "aware.pt"  # an untrained model would ignore --exposure
    save_checkpoint(exposure_aware_model, checkpoint)

    def run(name, *options):
        result = lldiff("enhance", dark_folder, tmp_path / name, "--model", checkpoint, "--quiet", "--eta", "1",
                        *options)
        assert result.exit_code == 1, result.output  # broken.jpg
        return read_image(next((tmp_path / name).glob("a.*"))).rgb

    plain = run("plain")
    tiled = run("tiled", "--tile", "16", "--overlap", "4")
    assert not torch.equal(plain, tiled)
    assert torch.equal(tiled, run("batched", "--tile", "16", "--overlap", "4", "--batch-size", "2"))
    assert not torch.equal(plain, run("steps", "--steps", "1"))
    assert not torch.equal(plain, run("exposure", "--exposure", "0.7"))
    assert not torch.equal(plain, run("seed", "--seed", "1"))
    assert run("webp", "--format", "webp").shape == plain.shape and (tmp_path / "webp" / "a.webp").is_file()


@pytest.mark.parametrize("args, message", [
    (["--exposure", "bright"], "--exposure must be 'auto' or a number"),
    (["--exposure", "1.5"], "--exposure must be in (0, 1)"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--precision", "float16", "--device", "cpu"], "--precision float16 needs CUDA"),
    (["--precision", "double"], "unknown precision 'double'"),
    (["--ensemble", "3"], "--ensemble must be one of 1, 2, 4, got 3"),
    (["--steps", "5000"], "steps must be in 1..100, got 5000"),  # the test model's 100-step schedule
    (["--format", "gif"], "unknown output format 'gif'"),
])
def test_enhance_bad_options_are_one_line(tmp_path, checkpoint, dark_folder, args, message):
    result = lldiff("enhance", dark_folder, tmp_path / "o", "--model", checkpoint, *args)
    assert result.exit_code == 2  # refused once, before any image (not one failure per image)
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_enhance_without_a_default_model_says_so(tmp_path, dark_folder, monkeypatch):
    monkeypatch.setenv("LLDIFF_MODELS", str(tmp_path / "empty"))
    result = lldiff("enhance", dark_folder, tmp_path / "o")
    assert result.exit_code == 2
    assert "no default model is installed" in result.output


def test_enhance_refuses_input_as_output_and_missing_input(tmp_path, checkpoint, dark_folder):
    result = lldiff("enhance", dark_folder, dark_folder, "--model", checkpoint)
    assert result.exit_code == 2 and "output folder is the input folder" in result.output
    result = lldiff("enhance", tmp_path / "nope", tmp_path / "o", "--model", checkpoint)
    assert result.exit_code == 2 and "input folder does not exist" in result.output


def test_enhance_with_a_corrupt_model_file(tmp_path, dark_folder):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 10)
    result = lldiff("enhance", dark_folder, tmp_path / "o", "--model", bad)
    assert result.exit_code == 2 and "bad.pt" in result.output and "Traceback" not in result.output


def test_enhance_writes_a_greyscale_photo_back_as_greyscale(tmp_path, checkpoint):
    rng = np.random.default_rng(1)
    root = tmp_path / "ir"
    root.mkdir()
    PILImage.fromarray(rng.integers(0, 60, (20, 28), dtype=np.uint8), "L").save(root / "night.png")
    PILImage.fromarray(rng.integers(0, 60, (20, 28), dtype=np.uint8), "L").save(root / "cam.jpg")
    result = lldiff("enhance", root, tmp_path / "out", "--model", checkpoint, "--quiet")
    assert result.exit_code == 0, result.output
    for name in ("night.png", "cam.jpg"):
        out = pil_open(tmp_path / "out" / name)
        assert out.mode == "L" and out.size == (28, 20)
    assert read_image(tmp_path / "out" / "night.png").grey


def test_enhance_keeps_the_photo_colour_profile(tmp_path, checkpoint):
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    root = tmp_path / "phone"
    root.mkdir()
    dark = np.random.default_rng(2).integers(0, 60, (20, 28, 3), dtype=np.uint8)
    PILImage.fromarray(dark).save(root / "p3.jpg", icc_profile=profile)
    result = lldiff("enhance", root, tmp_path / "out", "--model", checkpoint, "--quiet")
    assert result.exit_code == 0, result.output
    assert pil_open(tmp_path / "out" / "p3.jpg").info.get("icc_profile") == profile


def test_enhance_reads_and_writes_phone_heic(tmp_path, checkpoint, dark_folder):
    pytest.importorskip("pillow_heif")
    import pillow_heif

    pillow_heif.register_heif_opener()
    root = tmp_path / "iphone"
    root.mkdir()
    PILImage.fromarray(np.random.default_rng(3).integers(0, 60, (20, 28, 3), dtype=np.uint8)).save(
        root / "IMG_0001.HEIC", quality=95)
    hdr = np.random.default_rng(4).integers(0, 240, (20, 28, 3)).astype(np.uint16) << 6  # 10-bit samples
    pillow_heif.from_bytes(mode="RGB;16", size=(28, 20), data=hdr.tobytes()).save(root / "IMG_0002.HEIC")
    result = lldiff("enhance", root, tmp_path / "out", "--model", checkpoint, "--quiet")
    assert result.exit_code == 0, result.output
    assert read_image(tmp_path / "out" / "IMG_0001.HEIC").size == (20, 28)
    assert pillow_heif.open_heif(tmp_path / "out" / "IMG_0001.HEIC").info["bit_depth"] == 8
    assert pillow_heif.open_heif(tmp_path / "out" / "IMG_0002.HEIC").info["bit_depth"] == 10
    result = lldiff("enhance", dark_folder, tmp_path / "as_heic", "--model", checkpoint, "--quiet", "--format", "heic")
    assert read_image(tmp_path / "as_heic" / "a.heic").size == (21, 30)


def test_the_overlap_default_is_the_tilings():
    import inspect

    from lldiff_cli import cli
    from lldiff_cli.tiling import DEFAULT_OVERLAP

    assert inspect.signature(cli.enhance).parameters["overlap"].default == DEFAULT_OVERLAP


def test_enhance_interrupted_says_how_to_resume(tmp_path, checkpoint, dark_folder, monkeypatch):
    import lldiff_cli.enhance

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lldiff_cli.enhance, "enhance_folder", interrupted)
    result = lldiff("enhance", dark_folder, tmp_path / "o", "--model", checkpoint, "--quiet")
    assert result.exit_code == 130
    assert "run the same command again to resume" in result.output and "Traceback" not in result.output


def test_a_model_that_fails_to_load_leaves_no_output_folder(tmp_path, dark_folder):
    from PIL import Image

    (tmp_path / "text.pt").write_text("hello, not weights\n")
    Image.new("RGB", (8, 8)).save(tmp_path / "some.png")
    for model in (tmp_path / "text.pt", tmp_path / "some.png"):
        result = lldiff("enhance", dark_folder, tmp_path / "new" / "o", "--model", model)
        assert result.exit_code == 2
        assert result.output.replace("\n", "") == f"error: {model}: not an lldiff checkpoint (not a file torch.save wrote)"
        assert not (tmp_path / "new").exists()


def test_enhance_quiet_names_each_failure_once(tmp_path, checkpoint, dark_folder):
    result = lldiff("enhance", dark_folder, tmp_path / "o", "--model", checkpoint, "--quiet")
    assert result.exit_code == 1
    assert result.output.count("broken.jpg") == 1, result.output


def test_summary_lines_are_not_wrapped_when_not_a_terminal(tmp_path, checkpoint, dark_folder, monkeypatch):
    """Piped into a log or `| cat`, a summary line stays one line, however long its path."""
    monkeypatch.setenv("COLUMNS", "40")
    out = tmp_path / ("a_long_folder_name_" * 4) / "enhanced"
    result = lldiff("enhance", dark_folder, out, "--model", checkpoint, "--quiet")
    assert result.exit_code == 1
    summary = f"enhanced into {out}: 2 done, 0 skipped, 1 failed"
    assert any(line.startswith(summary) for line in result.output.splitlines()), result.output


@pytest.fixture
def nine_images(tmp_path) -> Path:
    """Nine small dark images of different sizes, three to a folder: the root, sub/ and sub/deeper/."""
    rng = np.random.default_rng(5)
    root = tmp_path / "many"
    for i, folder in enumerate([root, root / "sub", root / "sub" / "deeper"] * 3):
        folder.mkdir(parents=True, exist_ok=True)
        size = (8 + i, 12 + 2 * i, 3)
        PILImage.fromarray(rng.integers(0, 60, size, dtype=np.uint8)).save(folder / f"img{i}.{'png' if i % 2 else 'jpg'}")
    return root


def _written(monkeypatch) -> list[Path]:
    """The paths enhance writes from now on, in order (a path twice: written twice)."""
    import lldiff_cli.enhance

    paths, write = [], lldiff_cli.enhance.write_like
    monkeypatch.setattr(lldiff_cli.enhance, "write_like",
                        lambda path, *args: (paths.append(Path(path)), write(path, *args))[1])
    return paths


def _shard_summary(output: str, part: str) -> tuple[int, int, int, int]:
    """(images taken, of all, done, skipped) from a --shard run's summary line."""
    text = output.replace("\n", " ")
    found = re.search(rf"shard {part}: (\d+) of (\d+) images\): (\d+) done, (\d+) skipped", text)
    assert found, output
    return tuple(int(n) for n in found.groups())


def test_enhance_shards_together_write_each_image_once_as_one_run_does(tmp_path, checkpoint, nine_images,
                                                                        monkeypatch):
    args = ["--model", checkpoint, "--recursive", "--quiet", "--seed", "7", "--eta", "1"]  # eta 1: the seed matters
    written = _written(monkeypatch)
    assert lldiff("enhance", nine_images, tmp_path / "whole", *args).exit_code == 0
    whole = sorted(p.relative_to(tmp_path / "whole") for p in written)
    assert len(whole) == 9
    written.clear()
    taken = []
    for part in ("1/2", "2/2"):  # both into one folder, as a job array's tasks do
        result = lldiff("enhance", nine_images, tmp_path / "sharded", *args, "--shard", part)
        assert result.exit_code == 0, result.output
        count, total, done, skipped = _shard_summary(result.output, part)
        assert total == 9 and done == count and skipped == 0  # the other shard's outputs are not its own
        taken.append(count)
    assert sum(taken) == 9 and 0 not in taken
    assert sorted(p.relative_to(tmp_path / "sharded") for p in written) == whole  # each image written once
    for rel in whole:  # each image is enhanced on its own with the same seed: the same pixels
        assert torch.equal(read_image(tmp_path / "sharded" / rel).rgb, read_image(tmp_path / "whole" / rel).rgb), rel

    # A file added later (a bad one) goes to one shard; the others stay where they were: skipped.
    (nine_images / "sub" / "late.jpg").write_text("not a jpeg")
    written.clear()
    failed = []
    for part, count in zip(("1/2", "2/2"), taken):
        result = lldiff("enhance", nine_images, tmp_path / "sharded", *args, "--shard", part)
        got, total, done, skipped = _shard_summary(result.output, part)
        assert total == 10 and done == 0 and skipped == count and got - count in (0, 1)
        assert result.exit_code == got - count, result.output  # 1: the shard that took the bad file
        failed.append(result.output.count("late.jpg"))
    assert failed in ([1, 0], [0, 1]) and written == []


def test_the_shard_split_is_stable_covers_each_input_once_and_is_balanced():
    from lldiff_cli.batch import Shard

    names = [Path(f"day{d}") / f"IMG_{i:04d}.jpg" for d in range(10) for i in range(100)]
    for count in (1, 2, 3, 8):
        parts = [Shard(i, count) for i in range(1, count + 1)]
        chosen = {str(part): part.select(names) for part in parts}
        assert sorted(n for rels in chosen.values() for n in rels) == sorted(names)  # each once
        assert all(len(rels) > 0.8 * len(names) / count for rels in chosen.values())
        more = names + [Path("day3") / "IMG_0050b.jpg", Path("new") / "a.png"]  # new files in the folder
        assert all(set(part.select(more)) >= set(chosen[str(part)]) for part in parts)
    # The split is a hash of the POSIX relative path, fixed across versions and platforms: a job
    # array whose tasks ran different lldiff versions, or on Windows, still covers each image once.
    from pathlib import PureWindowsPath

    names = ("a.png", "b.png", "sub/c.jpg", "IMG_0001.HEIC", "IMG_0002.HEIC", "2024/07/01/DSC_1234.tif", "été/nuit.jpg")
    assert [next(i for i in range(1, 9) if Shard(i, 8).takes(Path(name))) for name in names] == [7, 2, 7, 3, 4, 7, 4]
    assert Shard(4, 8).takes(PureWindowsPath(r"été\nuit.jpg"))


def test_enhance_shards_refuse_two_inputs_that_would_share_an_output_whatever_their_parts(tmp_path, checkpoint,
                                                                                            dark_folder):
    """a.png and a.jpg may fall in different parts: each part alone would see no clash."""
    PILImage.fromarray(np.zeros((8, 8, 3), np.uint8)).save(dark_folder / "a.jpg")
    for part in ("1/2", "2/2", "1/3", "2/3", "3/3"):
        result = lldiff("enhance", dark_folder, tmp_path / "o", "--model", checkpoint, "--format", "png",
                        "--shard", part)
        assert result.exit_code == 2 and "would both be written to" in result.output.replace("\n", ""), part
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", ["0/2", "3/2", "a/b", "1/0", "1", "-1/2", "1/2/3", "1_0/20", ""])
def test_enhance_bad_shard_is_one_line_before_any_work(tmp_path, checkpoint, dark_folder, value):
    result = lldiff("enhance", dark_folder, tmp_path / "o", "--model", checkpoint, "--shard", value)
    assert result.exit_code == 2
    assert result.output.startswith("error: --shard takes I/N") and repr(value) in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "o").exists()


def test_a_shard_split_between_ranks_takes_exactly_that_shard():
    """torchrun's processes split a part further; together they take that part, whatever their number."""
    from lldiff_cli.batch import Shard

    names = [Path(f"day{d}") / f"IMG_{i:04d}.jpg" for d in range(10) for i in range(60)]
    for part in (Shard(1, 1), Shard(2, 3), Shard(8, 8)):
        for world in (1, 2, 4):
            shares = [part.for_rank(rank, world).select(names) for rank in range(world)]
            assert sorted(n for share in shares for n in share) == part.select(names)  # each once
            assert all(share for share in shares)
    assert Shard(3, 8).for_rank(1, 4) == Shard(11, 32)  # part I + N * rank of N * world
    with pytest.raises(LldiffError, match="rank 2 is not one of 0 to 1"):
        Shard(1, 2).for_rank(2, 2)


def torchrun(*args, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node NPROC -m lldiff_cli enhance ARGS`` on the CPU."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "lldiff_cli", "enhance", *(str(a) for a in args), "--device", "cpu"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)


def _rank_summaries(output: str, world: int) -> dict[int, tuple[int, int, int, int, int]]:
    """rank -> (images taken, of all, done, skipped, failed) from each process's summary line."""
    found = re.findall(rf"rank (\d+)/{world}: (\d+) of (\d+) images\): (\d+) done, (\d+) skipped, (\d+) failed",
                       output.replace("\n", " "))
    summaries = {int(rank): tuple(int(n) for n in numbers) for rank, *numbers in found}
    assert sorted(summaries) == list(range(world)) and len(found) == world, output
    return summaries


def test_torchrun_processes_split_the_images_and_write_each_once_as_one_run_does(tmp_path, checkpoint, nine_images):
    args = ["--model", checkpoint, "--recursive", "--quiet", "--seed", "7", "--eta", "1"]  # eta 1: the seed matters
    assert lldiff("enhance", nine_images, tmp_path / "whole", *args).exit_code == 0
    whole = sorted(p.relative_to(tmp_path / "whole") for p in (tmp_path / "whole").rglob("*") if p.is_file())
    assert len(whole) == 9
    proc = torchrun(nine_images, tmp_path / "ranks", *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summaries = _rank_summaries(proc.stderr, 2)
    # Each process enhanced (wrote) only its own share; the shares add up to the 9 images.
    assert all(total == 9 and done == taken > 0 and skipped == failed == 0
               for taken, total, done, skipped, failed in summaries.values()), summaries
    assert sum(taken for taken, *_ in summaries.values()) == 9
    assert sorted(p.relative_to(tmp_path / "ranks") for p in (tmp_path / "ranks").rglob("*") if p.is_file()) == whole
    for rel in whole:  # the same pixels as one process gives
        assert torch.equal(read_image(tmp_path / "ranks" / rel).rgb, read_image(tmp_path / "whole" / rel).rgb), rel


def test_a_bad_file_in_one_share_does_not_stop_the_other_processes(tmp_path, checkpoint):
    """torchrun stops every process when one exits non-zero: the process whose share is one broken
    file (exit 1) must wait for the others to finish theirs. Here its share is only that file."""
    from lldiff_cli.batch import Shard

    rng = np.random.default_rng(6)
    root = tmp_path / "mixed"
    root.mkdir()
    bad = next(name for name in (f"bad{i}.jpg" for i in range(100)) if Shard(1, 1).for_rank(0, 2).takes(Path(name)))
    (root / bad).write_text("not a jpeg")
    good = [name for name in (f"img{i}.png" for i in range(100)) if Shard(1, 1).for_rank(1, 2).takes(Path(name))][:3]
    for name in good:
        PILImage.fromarray(rng.integers(0, 60, (64, 64, 3), dtype=np.uint8)).save(root / name)
    proc = torchrun(root, tmp_path / "out", "--model", checkpoint, "--quiet", "--steps", "50")
    assert proc.returncode != 0  # torchrun fails when a process fails
    summaries = _rank_summaries(proc.stderr, 2)
    assert summaries == {0: (1, 4, 0, 0, 1), 1: (3, 4, 3, 0, 0)}, proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(good)
    assert proc.stderr.count(f"failed {bad}") == 1
