"""`lldiff eval` through the command line, on a generated LOL-shaped tree of tiny images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from lldiff_cli import metrics as M
from lldiff_cli.cli import app
from lldiff_cli.errors import LldiffError
from conftest import pil_open

runner = CliRunner()
H, W = 32, 48
FAST = ["--metric", "psnr", "--metric", "ssim", "--metric", "psnr_gtmean", "--metric", "ssim_gtmean"]


def lldiff(*args):
    return runner.invoke(app, [str(a) for a in args])


def pair(seed: int, h=H, w=W) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 5, y * 7, (x + y) * 3], axis=2) % 256
    high = np.clip(base + rng.integers(0, 30, base.shape), 0, 255).astype(np.uint8)
    low = (high.astype(np.float64) * 0.08).round().astype(np.uint8)
    return low, high


def lol_tree(root: Path, bad: bool = True) -> Path:
    """LOL/eval15 with three good pairs and, if ``bad``, a missing ground truth,
    a size mismatch and an unreadable low-light image."""
    low_dir, high_dir = root / "LOL/eval15/low", root / "LOL/eval15/high"
    low_dir.mkdir(parents=True)
    high_dir.mkdir(parents=True)
    for i in (1, 2, 3):
        low, high = pair(i)
        PILImage.fromarray(low).save(low_dir / f"{i}.png")
        PILImage.fromarray(high).save(high_dir / f"{i}.png")
    if bad:
        PILImage.fromarray(pair(4)[0]).save(low_dir / "4.png")  # no ground truth
        PILImage.fromarray(pair(5)[0]).save(low_dir / "5.png")  # size mismatch
        PILImage.fromarray(pair(5, h=H + 2)[1]).save(high_dir / "5.png")
        (low_dir / "6.png").write_bytes(b"not an image at all")  # unreadable
        PILImage.fromarray(pair(6)[1]).save(high_dir / "6.png")
    return root


def test_eval_scores_good_images_and_names_the_bad_ones(tmp_path):
    root = lol_tree(tmp_path / "data")
    out = tmp_path / "out"
    r = lldiff("eval", "--dataset", "LOL", "--data-root", root, "-m", "identity", "-m", "gamma:0.25",
               "--json", out / "r.json", "--csv", out / "r.csv", "--save-dir", out / "imgs",
               "--sheet", out / "sheet.png", "--sheet-images", "1,3.png,6", "-q")
    assert r.exit_code == 1, r.output
    assert "4: no ground truth" in r.stderr
    assert "5: size mismatch" in r.stderr
    assert "6: " in r.stderr and "6.png" in r.stderr
    assert "identity" in r.stdout and "gamma:0.25" in r.stdout and "n/a" in r.stdout

    report = json.loads((out / "r.json").read_text())
    assert report["protocol"]["split"] == "test"
    assert set(report["protocol"]["versions"]) >= {"lldiff", "torch", "numpy", "opencv", "python"}
    assert "Gaussian" in report["protocol"]["definitions"]["ssim"]
    assert report["protocol"]["precision"] in ("float32", "bfloat16")  # what "auto" chose on this machine
    results = {e["method"]: e for e in report["results"]}
    assert list(results) == ["identity", "gamma:0.25"]
    for e in results.values():
        assert e["n"] == 3
        assert {"psnr", "ssim", "psnr_gtmean", "ssim_gtmean", "loe", "niqe"} <= set(e)
        assert e["lpips"] is None  # no weights here: n/a, never a number
        assert e["niqe"] is None  # 48x32 is too small for NIQE
    assert results["gamma:0.25"]["psnr"] > results["identity"]["psnr"]
    assert sorted(f["image"] for f in report["failures"]) == ["4", "5", "6"]

    # The means are the metrics of the files themselves.
    lows = [np.asarray(pil_open(root / f"LOL/eval15/low/{i}.png")) for i in (1, 2, 3)]
    highs = [np.asarray(pil_open(root / f"LOL/eval15/high/{i}.png")) for i in (1, 2, 3)]
    assert results["identity"]["psnr"] == pytest.approx(np.mean([M.psnr(a, b) for a, b in zip(lows, highs)]))
    assert results["identity"]["ssim"] == pytest.approx(np.mean([M.ssim(a, b) for a, b in zip(lows, highs)]))
    gamma = [np.round((a / 255.0) ** 0.25 * 255) for a in lows]
    assert results["gamma:0.25"]["psnr"] == pytest.approx(
        np.mean([M.psnr(a, b) for a, b in zip(gamma, highs)]), abs=0.05)
    assert results["identity"]["psnr_gtmean"] == pytest.approx(
        np.mean([M.psnr_gtmean(a, b) for a, b in zip(lows, highs)]))
    assert results["identity"]["psnr_gtmean"] > results["identity"]["psnr"] + 5  # the rescale was applied

    with open(out / "r.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6
    assert {(row["method"], row["image"]) for row in rows} == {
        (m, str(i)) for m in ("identity", "gamma:0.25") for i in (1, 2, 3)}
    assert all(row["lpips"] == "" for row in rows)
    by_image = {row["image"]: row for row in rows if row["method"] == "identity"}
    for i, (low_i, high_i) in enumerate(zip(lows, highs), 1):  # each column holds its own metric
        assert float(by_image[str(i)]["psnr"]) == pytest.approx(M.psnr(low_i, high_i), abs=1e-3)
        assert float(by_image[str(i)]["ssim"]) == pytest.approx(M.ssim(low_i, high_i), abs=1e-3)

    saved = sorted(p.relative_to(out / "imgs").as_posix() for p in (out / "imgs").rglob("*.png"))
    assert saved == [f"{m}/{i}.png" for m in ("gamma_0.25", "identity") for i in (1, 2, 3)]
    for i, expected in enumerate(gamma, 1):  # the enhanced image, not the input or the ground truth
        assert np.abs(np.asarray(pil_open(out / "imgs" / "gamma_0.25" / f"{i}.png"), float) - expected).max() <= 1
    sheet = pil_open(out / "sheet.png")
    assert sheet.width > 4 * 320 and sheet.height > 2 * 200  # 2 rows x (input, 2 methods, truth)
    assert "left off the sheet (not scored by every method): 6" in r.stderr


def test_eval_of_a_clean_set_exits_0_and_scores_the_default_model_and_identity(tmp_path, monkeypatch):
    import torch

    from lldiff_cli.checkpoints import DEFAULT_MODEL_NAME, save_checkpoint, sha256_of
    from lldiff_cli.model import WaveletDiffusion
    from tests.conftest import tiny_config

    models = tmp_path / "models"
    torch.manual_seed(0)
    save_checkpoint(WaveletDiffusion(tiny_config()), models / "tiny.pt")
    (models / f"{DEFAULT_MODEL_NAME}.yaml").write_text(f"weights: tiny.pt\nsha256: {sha256_of(models / 'tiny.pt')}\n")
    monkeypatch.setenv("LLDIFF_MODELS", str(models))
    root = lol_tree(tmp_path / "data", bad=False)
    r = lldiff("eval", "--dataset", "LOL", "--data-root", root, "-q", *FAST)
    assert r.exit_code == 0, r.output
    assert "default" in r.stdout and "identity" in r.stdout and "LOE" not in r.stdout


def test_eval_reads_the_data_root_from_the_environment(tmp_path, monkeypatch):
    root = lol_tree(tmp_path / "data", bad=False)
    monkeypatch.setenv("LLDIFF_DATA", str(root))
    r = lldiff("eval", "--dataset", "LOL", "-m", "he", "--limit", "1", "-q", *FAST)
    assert r.exit_code == 0, r.output
    # One line, whatever the console's width and the path's length (piped output is not wrapped).
    assert f"LOL test ({root / 'LOL' / 'eval15'}): 1 images" in r.stdout.splitlines()


def test_eval_missing_layout_is_one_line_naming_the_path(tmp_path, monkeypatch):
    r = lldiff("eval", "--dataset", "LOL", "--data-root", tmp_path, "-q")
    assert r.exit_code == 2
    assert str(tmp_path / "LOL/eval15/low") in r.stderr.replace("\n", "")
    assert "eval15/{low,high}" in r.stderr.replace("\n", "")
    assert "Traceback" not in r.output and "--data-root" not in r.stderr  # the root was given
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLDIFF_DATA", raising=False)
    r = lldiff("eval", "--dataset", "LOL", "-q")  # the default root, ./data: say how to choose another
    assert r.exit_code == 2 and "(--data-root or $LLDIFF_DATA sets it)" in r.stderr.replace("\n", "")


@pytest.mark.parametrize("option, target, reason", [
    ("--save-dir", "afile/sub", "cannot create"),
    ("--csv", "afile/x.csv", "cannot create"),
    ("--json", "adir", "is a folder"),
    ("--sheet", "sheet.txt", "not an image extension"),
])
def test_eval_refuses_an_output_it_cannot_write_before_scoring(tmp_path, option, target, reason):
    root = lol_tree(tmp_path / "data", bad=False)
    (tmp_path / "afile").write_text("a file, not a folder")
    (tmp_path / "adir").mkdir()
    r = lldiff("eval", "--dataset", "LOL", "--data-root", root, "-m", "identity", *FAST, option, tmp_path / target)
    assert r.exit_code == 2, r.output
    assert reason in r.stderr and str(tmp_path / target) in r.stderr.replace("\n", "")
    assert "Traceback" not in r.output and "identity" not in r.stdout  # nothing was scored


def test_sheet_images_by_count_are_spread_evenly_and_by_name_kept_in_order():
    from lldiff_cli.data import Pair
    from lldiff_cli.evaluate import sheet_names

    pairs = [Pair(str(i), Path(f"{i}.png"), Path(f"{i}.png")) for i in range(10)]
    assert sheet_names(pairs, "4") == ["0", "3", "6", "9"]
    assert sheet_names(pairs, "1") == ["0"] and sheet_names(pairs, "30") == [str(i) for i in range(10)]
    assert sheet_names(pairs, "7.png, 2") == ["7", "2"]
    with pytest.raises(LldiffError, match="no image named 'x'"):
        sheet_names(pairs, "x")


def test_eval_refuses_a_sheet_of_nothing_and_a_split_of_plain_folders(tmp_path):
    root = lol_tree(tmp_path / "data", bad=False)
    r = lldiff("eval", "--dataset", "LOL", "--data-root", root, "-m", "identity", "--sheet", tmp_path / "s.png",
               "--sheet-images", "0")
    assert r.exit_code == 2 and "--sheet-images 0 puts no image on the sheet" in r.stderr
    r = lldiff("eval", "--low", root / "LOL/eval15/low", "--split", "train", "-m", "identity")
    assert r.exit_code == 2 and "--split chooses a part of a --dataset" in r.stderr


def test_eval_unknown_method_lists_the_allowed(tmp_path):
    root = lol_tree(tmp_path / "data", bad=False)
    r = lldiff("eval", "--dataset", "LOL", "--data-root", root, "-m", "magic")
    assert r.exit_code == 2
    assert "unknown method 'magic'" in r.stderr and "gamma:G" in r.stderr


def test_eval_of_an_unpaired_folder_uses_no_reference_metrics(tmp_path):
    root = lol_tree(tmp_path / "data", bad=False)
    out = tmp_path / "r.json"
    r = lldiff("eval", "--low", root / "LOL/eval15/low", "-m", "clahe", "--json", out, "-q")
    assert r.exit_code == 0, r.output
    (entry,) = json.loads(out.read_text())["results"]
    assert entry["n"] == 3 and "psnr" not in entry and entry["loe"] > 0
    r = lldiff("eval", "--low", root / "LOL/eval15/low", "--metric", "psnr", "-m", "identity")
    assert r.exit_code == 2 and "need ground truth" in r.stderr


def test_eval_with_lpips_weights_fills_the_column(tmp_path):
    import torch

    root = lol_tree(tmp_path / "data", bad=False)
    torch.manual_seed(0)
    model = M.LPIPS()
    torch.save(model.state_dict(), tmp_path / "lpips.pth")
    out = tmp_path / "r.json"
    r = lldiff("eval", "--dataset", "LOL", "--data-root", root, "--lpips-weights", tmp_path / "lpips.pth",
               "--metric", "lpips", "-m", "identity", "--json", out, "-q")
    assert r.exit_code == 0, r.output
    (entry,) = json.loads(out.read_text())["results"]
    assert isinstance(entry["lpips"], float)
    assert json.loads(out.read_text())["protocol"]["lpips_weights"] == [str(tmp_path / "lpips.pth")]
    r = lldiff("eval", "--dataset", "LOL", "--data-root", root, "--lpips-weights", tmp_path / "none.pth", "-m", "identity")
    assert r.exit_code == 2 and "LPIPS weights not found" in r.stderr


def test_eval_scores_a_checkpoint_beside_the_baselines(tmp_path):
    import torch

    from tests.conftest import tiny_config
    from lldiff_cli.checkpoints import save_checkpoint
    from lldiff_cli.model import WaveletDiffusion

    root = lol_tree(tmp_path / "data", bad=False)
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(WaveletDiffusion(tiny_config()), ckpt)
    out = tmp_path / "r.json"
    r = lldiff("eval", "--dataset", "LOL", "--data-root", root, "-m", ckpt, "-m", "identity",
               "--limit", "2", "--json", out, "-q", *FAST)
    assert r.exit_code == 0, r.output
    results = json.loads(out.read_text())["results"]
    assert [e["method"] for e in results] == ["tiny", "identity"]
    assert results[0]["n"] == 2 and isinstance(results[0]["psnr"], float)


@pytest.mark.parametrize("option, target", [
    ("--csv", "low/2.png"),          # an input image
    ("--sheet", "high/1.png"),       # a ground-truth image
    ("--json", "low/r.json"),        # a new file among the inputs
    ("--csv", "high/sub/r.csv"),     # inside an input folder
    ("--save-dir", "low"),           # an input folder itself
    ("--save-dir", "."),             # DIR/identity/ is safe, but DIR/low/ would be written...
])
def test_eval_never_writes_a_report_among_its_inputs(tmp_path, option, target):
    root = lol_tree(tmp_path / "data", bad=False)
    folder = root / "LOL/eval15"
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    method = tmp_path / "low.pt"  # ...by a method named "low"
    if target == ".":
        import torch

        from lldiff_cli.checkpoints import save_checkpoint
        from lldiff_cli.model import WaveletDiffusion
        from tests.conftest import tiny_config

        torch.manual_seed(0)
        save_checkpoint(WaveletDiffusion(tiny_config()), method)
    for source in (["--dataset", "LOL", "--data-root", root], ["--low", folder / "low", "--high", folder / "high"]):
        r = lldiff("eval", *source, "-m", "identity", *(["-m", method] if target == "." else []), *FAST, "-q",
                   option, folder / target)
        assert r.exit_code == 2, r.output
        text = r.stderr.replace("\n", "")
        assert f"{option} {folder / target}" in text and "input" in text, text
        assert "identity" not in r.stdout  # refused before scoring
        assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_eval_names_each_failure_once(tmp_path):
    root = lol_tree(tmp_path / "data")
    r = lldiff("eval", "--dataset", "LOL", "--data-root", root, "-m", "identity", *FAST, "-q")
    assert r.exit_code == 1
    for name in ("4: no ground truth", "5: size mismatch", "6: "):
        assert r.stderr.count(f"failed {name}") == 1, r.stderr
    assert "3 image(s) not scored" in r.stderr


def test_eval_caps_the_psnr_of_an_identical_pair(tmp_path):
    """One perfect image would make the mean PSNR inf; a per-image PSNR is capped at 100 dB."""
    root = lol_tree(tmp_path / "data", bad=False)
    low = root / "LOL/eval15/low"
    out = tmp_path / "r.json"
    r = lldiff("eval", "--low", low, "--high", low, "-m", "identity", *FAST, "--json", out, "--csv",
               tmp_path / "r.csv", "-q")
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    (entry,) = report["results"]
    assert entry["psnr"] == M.PSNR_CAP == 100.0 and entry["psnr_gtmean"] == 100.0
    assert "inf" not in r.stdout and "100.00" in r.stdout
    assert "capped at 100 dB" in report["protocol"]["definitions"]["psnr"]
    assert "capped at 100 dB" in r.stderr.replace("\n", " ")
    with open(tmp_path / "r.csv") as fh:
        assert {float(row["psnr"]) for row in csv.DictReader(fh)} == {100.0}


def test_eval_report_lines_are_not_wrapped_when_not_a_terminal(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    root = lol_tree(tmp_path / "data", bad=False)
    csv_path = tmp_path / ("a_long_folder_name_" * 4) / "scores.csv"
    r = lldiff("eval", "--dataset", "LOL", "--data-root", root, "-m", "identity", *FAST, "--csv", csv_path, "-q")
    assert r.exit_code == 0, r.output
    assert f"per-image scores: {csv_path}" in r.stderr.splitlines()


def test_a_shipped_model_is_named_by_its_short_name(tmp_path, monkeypatch):
    import torch

    from lldiff_cli.checkpoints import resolve_model, save_checkpoint, sha256_of
    from lldiff_cli.errors import LldiffError
    from lldiff_cli.model import WaveletDiffusion
    from tests.conftest import tiny_config

    models = tmp_path / "models"
    for seed, name in ((0, "default"), (1, "lol")):
        torch.manual_seed(seed)
        save_checkpoint(WaveletDiffusion(tiny_config()), models / f"lldiff-{name}.pt")
        digest = sha256_of(models / f"lldiff-{name}.pt")
        (models / f"lldiff-{name}.yaml").write_text(f"weights: lldiff-{name}.pt\nsha256: {digest}\n")
    monkeypatch.setenv("LLDIFF_MODELS", str(models))
    assert resolve_model("lol") == models / "lldiff-lol.yaml" and resolve_model(None) == models / "lldiff-default.yaml"
    assert resolve_model("mine.pt") == Path("mine.pt")  # a file name is a path, found or not
    with pytest.raises(LldiffError, match="no model named 'nope': the shipped models are default, lol"):
        resolve_model("nope")
    root = lol_tree(tmp_path / "data", bad=False)
    r = lldiff("eval", "--dataset", "LOL", "--data-root", root, "-m", "lol", "-m", "default", "--json",
               tmp_path / "r.json", "-q", *FAST)
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "r.json").read_text())
    rows = {row["method"]: row for row in report["results"]}
    assert set(rows) == {"lol", "default"} and rows["lol"]["psnr"] != rows["default"]["psnr"]  # other weights
    r = lldiff("eval", "--dataset", "LOL", "--data-root", root, "-m", "nope", "-q", *FAST)
    assert r.exit_code != 0 and "unknown method 'nope'; allowed: a shipped model (default, lol)" in r.output
    low = root / "LOL" / "eval15" / "low"
    for name in ("lol", "default"):
        r = lldiff("enhance", low, tmp_path / name, "--model", name, "--steps", "1", "--ensemble", "1", "-q")
        assert r.exit_code == 0, r.output
    first = sorted((tmp_path / "lol").iterdir())[0]
    assert first.read_bytes() != (tmp_path / "default" / first.name).read_bytes()
