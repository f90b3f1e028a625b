"""benchmarks/oracle_parts.py: the model's output with parts taken from the ground truth."""

import torch
from conftest import load_script

oracle_parts = load_script("benchmarks/oracle_parts.py")


def test_rows_are_the_model_with_ground_truth_parts(tiny_model):
    torch.manual_seed(1)
    low, high = torch.rand(1, 3, 30, 44) * 0.2, torch.rand(1, 3, 30, 44)
    out = oracle_parts.outputs(tiny_model, low, high, steps=2)
    assert list(out) == list(oracle_parts.ROWS)
    assert all(image.shape == low.shape and 0 <= image.min() and image.max() <= 1 for image in out.values())
    # the first two rows are `enhance` with one copy, at auto exposure and at the true mean grey
    padded, size = oracle_parts.pad_to_multiple(low, tiny_model.multiple)
    for row, exposure in ((0, None), (1, float(high.mean()))):
        expected = tiny_model.enhance(padded, steps=2, seed=0, exposure=exposure, ensemble=1)
        torch.testing.assert_close(out[oracle_parts.ROWS[row]], oracle_parts.unpad(expected, size))
