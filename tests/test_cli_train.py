"""`lldiff train` through the command line: photos-only and paired runs, config errors, torchrun."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_train import TINY_YAML, make_paired, make_photos
from typer.testing import CliRunner

from lldiff_cli.checkpoints import load_checkpoint, model_from_checkpoint
from lldiff_cli.cli import app

runner = CliRunner()

FAST = ["data.crop=32", "data.batch_size=2", "optim.max_steps=4", "optim.warmup=1", "log_every=2",
        "val_every=2", "ckpt_every=2", "val_images=1"]


def lldiff(*args):
    # Rich prints to stderr; typer's CliRunner mixes stderr into result.output.
    return runner.invoke(app, [str(a) for a in args])


def test_photos_only_run_writes_everything(tmp_path):
    photos = make_photos(tmp_path / "photos")
    run = tmp_path / "run"
    result = lldiff("train", "-c", TINY_YAML, f"data.photos={photos}", f"out_dir={run}", *FAST, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "training on 5 photos, validating on 1" in result.output
    assert "step 2: validation PSNR" in result.output and "stopped at step 4" in result.output
    for name in ("config.yaml", "split.json", "log.jsonl", "last.pt", "best.pt", "curve.png"):
        assert (run / name).is_file(), name
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["photos"] == str(photos) and saved["data"]["crop"] == 32
    assert json.loads((run / "split.json").read_text())["val"] == ["photos/sub/photo1"]
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4]
    model_from_checkpoint(load_checkpoint(run / "best.pt"))  # loads with strict=True

    # Once more: refused; with --resume and more steps, it continues from step 4.
    again = lldiff("train", "-c", TINY_YAML, f"data.photos={photos}", f"out_dir={run}", *FAST, "--quiet")
    assert again.exit_code == 2 and "already holds a run" in again.output
    more = lldiff("train", "-c", run / "config.yaml", "optim.max_steps=6", "--resume", "--quiet")
    assert more.exit_code == 0, more.output
    assert load_checkpoint(run / "last.pt")["step"] == 6
    assert more.output.count("\n") == 1 and "stopped at step 6" in more.output  # --quiet: the summary only


def test_paired_folders_mixed_with_photos(tmp_path):
    low, high = make_paired(tmp_path / "pairs")
    photos = make_photos(tmp_path / "photos")
    result = lldiff("train", "-c", TINY_YAML, "data.layout=paired", f"data.low={low}", f"data.high={high}",
                    f"data.photos={photos}", "data.synthetic_ratio=0.5", "data.val_block=2", "data.val_fraction=0.5",
                    f"out_dir={tmp_path / 'run'}", *FAST)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "last.pt").is_file()
    assert re.search(r"training on \d+ pairs \+ \d+ photos", result.output)
    held_out = json.loads((tmp_path / "run" / "split.json").read_text())["val"]
    assert any(n.startswith("photos/") for n in held_out) and any(not n.startswith("photos/") for n in held_out)


@pytest.mark.parametrize("args, message", [
    (["data.crops=3"], "unknown config key data.crops; allowed: batch_size, cache_dir, crop"),
    (["optim.lr=fast"], "optim.lr: expected a number, got 'fast'"),
    (["data.darken.noise=maybe"], "data.darken.noise: expected true or false, got 'maybe'"),
    (["optim.lr"], "override 'optim.lr' is not of the form key=value"),
    (["data.layout=paired"], "data.layout 'paired' needs data.low and data.high folders"),
    (["data.crop=20"], "data.crop (20) must be a multiple of 8 for this model"),
    (["data.crop=16"], "data.crop (16) must be at least 32 for this model"),
])
def test_config_errors_are_one_line(tmp_path, args, message):
    photos = make_photos(tmp_path / "photos", n=2)
    result = lldiff("train", "-c", TINY_YAML, f"data.photos={photos}", f"out_dir={tmp_path / 'run'}",
                    "optim.max_steps=1", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_unknown_key_in_the_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: 0.001\n  momentum: 0.9\n")
    result = lldiff("train", "-c", bad)
    assert result.exit_code == 2
    assert result.output.strip() == ("error: unknown config key optim.momentum; allowed: ema_decay, grad_clip, "
                                     "lr, max_steps, min_lr, warmup, weight_decay")


@pytest.mark.parametrize("make, reason", [
    (lambda p: p.mkdir(), "is a folder, not a config file"),
    (lambda p: p.write_bytes(bytes(range(256)) * 4), "not a text file (not UTF-8)"),
    (lambda p: p.write_bytes(b"\x00\x01\x02 binary"), "not valid YAML"),
    (lambda p: p.write_text("- optim\n- data\n"), "a config file is a mapping of keys, got a list"),
    (lambda p: p.write_text("just words\n"), "a config file is a mapping of keys, got a string"),
], ids=["folder", "binary", "binary-ascii", "list", "scalar"])
def test_a_config_file_of_the_wrong_kind_is_one_line(tmp_path, make, reason):
    path = tmp_path / "config.yaml"
    make(path)
    result = lldiff("train", "-c", path, f"out_dir={tmp_path / 'run'}")
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.output.strip().startswith(f"error: {path}: {reason}"), result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "run").exists()


def test_missing_data_is_a_clear_error(tmp_path):
    result = lldiff("train", "-c", TINY_YAML, f"data.photos={tmp_path / 'nowhere'}", f"out_dir={tmp_path / 'r'}")
    assert result.exit_code == 2
    assert "input folder does not exist" in result.output and "Traceback" not in result.output


def test_an_out_dir_it_cannot_make_is_one_line(tmp_path):
    photos = make_photos(tmp_path / "photos", n=2)
    (tmp_path / "afile").write_text("a file, not a folder")
    result = lldiff("train", "-c", TINY_YAML, f"data.photos={photos}", f"out_dir={tmp_path / 'afile' / 'run'}")
    assert result.exit_code == 2, result.output
    assert f"cannot create out_dir {tmp_path / 'afile' / 'run'}: Not a directory" in result.output.replace("\n", "")


@pytest.mark.parametrize("extra", [[], ["model.refiner={width: 8, blocks: 1}", "train_sampler_every=2"]],
                         ids=["plain", "refiner-on-every-other-step"])
def test_two_processes_with_gloo(tmp_path, extra):
    """torchrun, two CPU processes: DistributedDataParallel over gloo, rank 0 writes.

    The run checks at the end that both processes hold bit-identical weights and EMA weights
    (it fails otherwise), so exit 0 means the replicas agreed. With a refiner that only the
    sampled steps use, DDP must expect parameters that a step leaves unused.
    """
    photos = make_photos(tmp_path / "photos")
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lldiff_cli", "train", "-c", str(TINY_YAML), f"data.photos={photos}", f"out_dir={run}",
           *FAST, *extra, "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = load_checkpoint(run / "last.pt")
    assert state["step"] == 4 and state["world_size"] == 2
    assert proc.stderr.count("training on 5 photos") == 1  # rank 0 alone reports
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4]
    # The checkpoint's weights moved from the common initialisation.
    torch.manual_seed(0)
    from lldiff_cli.model import WaveletDiffusion

    init = WaveletDiffusion(model_from_checkpoint(state).config).state_dict()
    assert any(not torch.equal(init[k], v) for k, v in state["state_dict"].items())


def test_ctrl_c_saves_last_pt_and_resume_continues(tmp_path):
    import signal
    import time

    photos = make_photos(tmp_path / "photos")
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    args = [sys.executable, "-m", "lldiff_cli", "train", "-c", str(TINY_YAML), f"data.photos={photos}",
            f"out_dir={run}", *FAST, "optim.max_steps=100000", "log_every=1", "val_every=100000", "--device", "cpu"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = run / "log.jsonl"
    deadline = time.monotonic() + 60
    while not (log.is_file() and log.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted at step" in err and "--resume" in err
    assert json.loads((run / "split.json").read_text())["val"]  # held-out photos, not yet scored:
    assert "not validated yet" in err and "no held-out images" not in err
    step = load_checkpoint(run / "last.pt")["step"]
    assert step >= 2
    more = lldiff("train", "-c", run / "config.yaml", f"optim.max_steps={step + 1}", "--resume", "--quiet")
    assert more.exit_code == 0, (more.output, more.exception)
    assert load_checkpoint(run / "last.pt")["step"] == step + 1


def test_a_run_that_fails_to_start_leaves_nothing_behind(tmp_path):
    # The init file exists (check_config passes) but is no checkpoint: the run fails at its start.
    photos = make_photos(tmp_path / "photos")
    bogus = tmp_path / "notes.pt"
    bogus.write_text("not a checkpoint\n")
    run = tmp_path / "run"
    result = lldiff("train", "-c", TINY_YAML, f"data.photos={photos}", f"out_dir={run}", f"init={bogus}", *FAST,
                    "--quiet")
    assert result.exit_code == 2 and "notes.pt" in result.output, result.output
    assert not run.exists()
    # In an out_dir that holds other files, only the run's own files go.
    run.mkdir()
    (run / "keep.txt").write_text("mine\n")
    result = lldiff("train", "-c", TINY_YAML, f"data.photos={photos}", f"out_dir={run}", f"init={bogus}", *FAST,
                    "--quiet")
    assert result.exit_code == 2
    assert sorted(p.name for p in run.iterdir()) == ["keep.txt"]


def test_a_second_run_into_a_running_runs_out_dir_is_refused(tmp_path):
    """Before its first checkpoint a run's out_dir looked free: a second run wrote into it too."""
    import signal
    import time

    photos = make_photos(tmp_path / "photos")
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    args = [sys.executable, "-m", "lldiff_cli", "train", "-c", str(TINY_YAML), f"data.photos={photos}",
            f"out_dir={run}", *FAST, "optim.max_steps=100000", "log_every=1", "val_every=100000",
            "ckpt_every=100000", "--device", "cpu"]
    first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        log = run / "log.jsonl"
        deadline = time.monotonic() + 60
        while not (log.is_file() and log.read_text().count("\n") >= 1) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not (run / "last.pt").exists()
        record = {name: (run / name).read_bytes() for name in ("config.yaml", "split.json")}
        second = lldiff("train", "-c", TINY_YAML, f"data.photos={photos}", f"out_dir={run}", *FAST,
                        "optim.lr=0.002", "--quiet")
        assert second.exit_code == 2, second.output
        assert f"{run} is in use by another run (pid {first.pid} on " in second.output.replace("\n", "")
        assert len(second.output.strip().splitlines()) == 1, second.output
        assert {name: (run / name).read_bytes() for name in record} == record
    finally:
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=60)
    assert first.returncode == 130, err[-2000:]
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1))  # one run's records, none of the other's
    assert load_checkpoint(run / "last.pt")["train_config"]["optim"]["lr"] == 0.001
    assert not (run / "train.lock").exists()  # let go at the end


@pytest.mark.parametrize("fails_to_start", [False, True], ids=["starts", "fails-to-start"])
def test_a_new_run_leaves_the_files_of_another_run_alone(tmp_path, fails_to_start):
    """A run killed before its first checkpoint (or a user) left these: a new run replaced them,
    and one that failed to start deleted them in its clean-up."""
    photos = make_photos(tmp_path / "photos", n=2)
    run = tmp_path / "run"
    run.mkdir()
    files = {"config.yaml": "out_dir: elsewhere  # theirs\n", "split.json": '{"val": ["x"]}\n',
             "log.jsonl": '{"step": 2, "loss": 0.5}\n'}
    for name, text in files.items():
        (run / name).write_text(text)
    bogus = tmp_path / "notes.pt"
    bogus.write_text("not a checkpoint\n")
    result = lldiff("train", "-c", TINY_YAML, f"data.photos={photos}", f"out_dir={run}", *FAST,
                    *[f"init={bogus}"] * fails_to_start, "--quiet")
    assert result.exit_code == 2, result.output
    assert f"{run} already holds config.yaml, split.json, log.jsonl" in result.output.replace("\n", "")
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert {p.name: p.read_text() for p in run.iterdir()} == files


def _own_config(tmp_path, run: Path, **extra) -> str:
    """tiny.yaml made fast, for ``run``, with the user's comments: a config kept in out_dir."""
    from lldiff_cli.config import apply_overrides, load_yaml

    photos = make_photos(tmp_path / "photos", n=2)
    data = apply_overrides(load_yaml(TINY_YAML), [*FAST, f"data.photos={photos}", f"out_dir={run}",
                                                  *(f"{k}={v}" for k, v in extra.items())])
    return "# my experiment: why I chose these\n" + yaml.safe_dump(data, sort_keys=False) + "# the end\n"


def test_a_config_kept_in_out_dir_is_neither_rewritten_nor_removed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    own = run / "config.yaml"
    bogus = tmp_path / "notes.pt"
    bogus.write_text("not a checkpoint\n")
    # A run that fails to start removes what it made, not the config it was given.
    own.write_text(_own_config(tmp_path, run, init=bogus))
    failed = lldiff("train", "-c", own, "--quiet")
    assert failed.exit_code == 2 and "notes.pt" in failed.output, failed.output
    assert [p.name for p in run.iterdir()] == ["config.yaml"]
    assert own.read_text() == _own_config(tmp_path, run, init=bogus)
    # Overrides would make the run's record differ from it: refused, as it would be rewritten.
    text = _own_config(tmp_path, run)
    own.write_text(text)
    refused = lldiff("train", "-c", own, "optim.lr=0.002", "--quiet")
    assert refused.exit_code == 2 and f"{run} already holds config.yaml" in refused.output.replace("\n", "")
    assert [p.name for p in run.iterdir()] == ["config.yaml"] and own.read_text() == text
    # As it is, it is the run's config: kept word for word, comments and all.
    result = lldiff("train", "-c", own, "--quiet")
    assert result.exit_code == 0, result.output
    assert own.read_text() == text
    assert (run / "last.pt").is_file()


def test_a_resume_that_fails_keeps_the_runs_config(tmp_path):
    """Resuming with another model failed, but only after config.yaml had been rewritten with it."""
    photos = make_photos(tmp_path / "photos", n=2)
    run = tmp_path / "run"
    assert lldiff("train", "-c", TINY_YAML, f"data.photos={photos}", f"out_dir={run}", *FAST, "--quiet").exit_code == 0
    record = {name: (run / name).read_bytes() for name in ("config.yaml", "split.json", "log.jsonl")}
    result = lldiff("train", "-c", run / "config.yaml", "model.unet.width=16", "--resume", "--quiet")
    assert result.exit_code == 2 and "holds another model" in result.output, result.output
    assert {name: (run / name).read_bytes() for name in record} == record
    # A resume that runs updates the run's own config.yaml.
    more = lldiff("train", "-c", run / "config.yaml", "optim.max_steps=5", "--resume", "--quiet")
    assert more.exit_code == 0, more.output
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["max_steps"] == 5


def test_a_lock_left_by_a_dead_run_does_not_block(tmp_path):
    photos = make_photos(tmp_path / "photos", n=2)
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.lock").write_text("pid 999999 on a-machine-that-lost-power\n")
    result = lldiff("train", "-c", TINY_YAML, f"data.photos={photos}", f"out_dir={run}", *FAST, "--quiet")
    assert result.exit_code == 0, result.output
    assert not (run / "train.lock").exists()
