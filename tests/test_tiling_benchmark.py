"""benchmarks/tiling.py: tiled against untiled output."""

import torch
from conftest import load_script

tiling_benchmark = load_script("benchmarks/tiling.py")


def test_compare_scores_tiled_against_untiled_and_the_ground_truth(tiny_model):
    torch.manual_seed(0)
    low, high = torch.rand(1, 3, 20, 30) * 0.2, torch.rand(1, 3, 20, 30)
    scores = tiling_benchmark.compare(tiny_model, low, high, (40, 64), tile=24)
    assert list(scores) == ["tiled to untiled", "untiled to GT", "tiled to GT"]
    assert all(0 < v < 100 for v in scores.values())
    # tiles as large as the image: the same output as untiled (PSNR of identical 8-bit images is inf)
    assert tiling_benchmark.compare(tiny_model, low, high, (40, 64), tile=64)["tiled to untiled"] == float("inf")
