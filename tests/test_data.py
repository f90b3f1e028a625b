"""Dataset layouts and pairing by name, on generated folders (no image is decoded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lldiff_cli import data as D
from lldiff_cli.errors import LldiffError


def touch(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")
    return folder


def test_lol_layouts_and_splits(tmp_path):
    touch(tmp_path / "LOL/eval15/low", "1.png", "22.png")
    touch(tmp_path / "LOL/eval15/high", "1.png", "22.png")
    touch(tmp_path / "LOL/our485/low", "2.png")
    touch(tmp_path / "LOL/our485/high", "2.png")
    test = D.load_dataset("LOL", root=tmp_path)
    assert [p.name for p in test.pairs] == ["1", "22"]
    assert test.pairs[0].low == tmp_path / "LOL/eval15/low/1.png"
    assert test.pairs[0].high == tmp_path / "LOL/eval15/high/1.png"
    assert test.problems == [] and test.paired
    train = D.load_dataset("lol", root=tmp_path, split="train")
    assert [p.name for p in train.pairs] == ["2"]


def test_lolv2_real_pairs_low_with_normal(tmp_path):
    root = tmp_path / "LOL-v2/Real_captured/Test"
    touch(root / "Low", "low00690.png", "low00691.png")
    touch(root / "Normal", "normal00690.png", "normal00691.png")
    ds = D.load_dataset("LOLv2-real", root=tmp_path)
    assert [(p.low.name, p.high.name) for p in ds.pairs] == [
        ("low00690.png", "normal00690.png"), ("low00691.png", "normal00691.png")]


@pytest.mark.parametrize("name,low,high", [
    ("LOLv2-syn", "LOL-v2/Synthetic/Train/Low", "LOL-v2/Synthetic/Train/Normal"),
    ("VE-LOL", "VE-LOL-L/VE-LOL-L-Cap-Full/train/low", "VE-LOL-L/VE-LOL-L-Cap-Full/train/high"),
])
def test_other_layouts(tmp_path, name, low, high):
    touch(tmp_path / low, "a.png")
    touch(tmp_path / high, "a.png")
    assert [p.name for p in D.load_dataset(name, root=tmp_path, split="train").pairs] == ["a"]


def test_missing_layout_names_the_path_and_the_layout(tmp_path):
    with pytest.raises(LldiffError) as err:
        D.load_dataset("LOL", root=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "LOL/eval15/low") in message
    assert "LOL/eval15/{low,high}" in message
    assert "\n" not in message


def test_unknown_dataset_and_split(tmp_path):
    with pytest.raises(LldiffError, match="allowed: LOL, LOLv2-real"):
        D.load_dataset("SID", root=tmp_path)
    with pytest.raises(LldiffError, match="allowed: train, test"):
        D.load_dataset("LOL", root=tmp_path, split="val")


def test_problems_are_named_and_the_rest_paired(tmp_path):
    low = touch(tmp_path / "low", "a.png", "b.png", "c.jpg", "d.png", "d.jpg")
    high = touch(tmp_path / "high", "a.png", "c.png", "z.png", "d.png")
    ds = D.paired_folders(low, high)
    assert [(p.name, p.high.name) for p in ds.pairs] == [("a", "a.png"), ("c", "c.png")]
    problems = dict(ds.problems)
    assert "no ground truth" in problems["b"]
    assert "without a low-light image" in problems["z"]
    assert "two low-light files" in problems["d"]


def test_plain_names_win_over_the_prefix_rule(tmp_path):
    low = touch(tmp_path / "low", "low1.png")
    high = touch(tmp_path / "high", "low1.png", "normal1.png")
    ds = D.paired_folders(low, high)
    assert ds.pairs[0].high.name == "low1.png"
    assert [n for n, _ in ds.problems] == ["normal1"]


def test_unpaired_folder_and_argument_errors(tmp_path):
    low = touch(tmp_path / "low", "x.png", "y.webp", "notes.txt")
    ds = D.load_dataset(low=low)
    assert not ds.paired and [p.high for p in ds.pairs] == [None, None]
    with pytest.raises(LldiffError, match="not both"):
        D.load_dataset("LOL", low=low)
    with pytest.raises(LldiffError, match="--high needs --low"):
        D.load_dataset(high=low)
    with pytest.raises(LldiffError, match="--low folder not found"):
        D.load_dataset(low=tmp_path / "nope")
    with pytest.raises(LldiffError, match="no images"):
        D.load_dataset(low=touch(tmp_path / "empty"))


def test_default_data_root(monkeypatch, tmp_path):
    monkeypatch.delenv(D.DATA_ENV, raising=False)
    assert D.default_data_root() == Path("data")
    monkeypatch.setenv(D.DATA_ENV, str(tmp_path))
    assert D.default_data_root() == tmp_path


def test_limit(tmp_path):
    touch(tmp_path / "l", "a.png", "b.png", "c.png")
    ds = D.load_dataset(low=tmp_path / "l")
    assert [p.name for p in ds.limit(2).pairs] == ["a", "b"]
    with pytest.raises(LldiffError):
        ds.limit(0)


def test_split_by_blocks_holds_out_every_kth_block_of_neighbours():
    names = [str(i) for i in range(20, 0, -1)]  # natural order: 1, 2, ..., 10, not 1, 10, 11
    train, val = D.split_by_blocks(names, 0.25, 2)
    assert sorted(names[i] for i in val) == ["15", "16", "7", "8"]  # the 4th and 8th blocks of 2
    assert sorted(train + val) == list(range(20))
    assert D.split_by_blocks(names, 0.0, 2)[1] == []
    assert len(D.split_by_blocks(names, 0.9, 1)[1]) == 10  # at most every other block


def test_split_singles_spreads_single_images_and_keeps_their_neighbours():
    names = [str(i) for i in range(20, 0, -1)]
    rest, singles = D.split_singles(names, list(range(20)), 4)
    assert [names[i] for i in singles] == ["3", "8", "13", "18"]  # evenly spread over 1..20
    assert sorted(rest + singles) == list(range(20))
    held = {int(names[i]) for i in singles}
    assert all(n - 1 not in held and n + 1 not in held for n in held)  # neighbours stay in training
    assert D.split_singles(names, list(range(20)), 0)[1] == []
    with pytest.raises(LldiffError, match="cannot hold out 11 single images of 20"):
        D.split_singles(names, list(range(20)), 11)


def test_split_singles_leaves_the_benchmarks_scenes_in_training():
    names = [str(i) for i in range(2, 42) if i not in (22, 23)]  # a training split without the test pairs
    keep = D.benchmark_neighbours("lol", names)  # LOL's eval15 names 1, 22 and 23 fall in 1..41
    assert keep == {"2", "21", "24"}
    rest, singles = D.split_singles(names, list(range(38)), 4, keep=keep)
    assert not keep & {names[i] for i in singles} and len(singles) == 4
    assert sorted(rest + singles) == list(range(38))
    assert D.benchmark_neighbours("LOLv2-real", names) == set()
    with pytest.raises(LldiffError, match="cannot hold out 4 single images of 6"):
        D.split_singles(names[:10], list(range(10)), 4, keep=set(names[:4]))


def test_run_split_reads_the_runs_held_out_names(tmp_path):
    pairs = [D.Pair(name, tmp_path / f"{name}.png") for name in ("1", "2", "3")]
    (tmp_path / "split.json").write_text('{"val": ["2"]}')
    assert [p.name for p in D.run_split(pairs, tmp_path)] == ["2"]
    assert [p.name for p in D.run_split(pairs, tmp_path, held_out=False)] == ["1", "3"]
    with pytest.raises(LldiffError, match="split.json not found"):
        D.run_split(pairs, tmp_path / "elsewhere")
    (tmp_path / "split.json").write_text('{"val": ["1", "2"], "singles": ["1"]}')
    assert [p.name for p in D.run_split(pairs, tmp_path, part="singles")] == ["1"]
    assert [p.name for p in D.run_split(pairs, tmp_path, part="blocks")] == ["2"]
    assert [p.name for p in D.run_split(pairs, tmp_path, held_out=False)] == ["3"]
    with pytest.raises(LldiffError, match="unknown held-out part 'x'"):
        D.run_split(pairs, tmp_path, part="x")
    (tmp_path / "split.json").write_text('{"train": []}')
    with pytest.raises(LldiffError, match="not a split.json"):
        D.run_split(pairs, tmp_path)
