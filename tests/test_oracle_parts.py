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


def test_finest_row_takes_only_the_finest_detail_bands_from_the_ground_truth(tiny_model):
    """'+ true finest' is 'true brightness' with level 1's bands the ground truth's: the same
    image halved (level 1's low band), the ground truth's finest detail; '+ true details' differs."""
    from lldiff_cli.wavelet import dwt2

    torch.manual_seed(2)
    low, high = torch.rand(1, 3, 32, 48) * 0.2, torch.rand(1, 3, 32, 48)
    images, _ = oracle_parts.rebuilt(tiny_model, low, high, steps=2)
    finest, brightness, details = (dwt2(images[oracle_parts.ROWS[k]]) for k in (2, 1, 3))
    torch.testing.assert_close(finest[0], brightness[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(finest[1], dwt2(high)[1], atol=1e-5, rtol=0)
    assert not torch.allclose(brightness[1], finest[1], atol=1e-3)  # the model's finest bands were replaced
    assert not torch.allclose(finest[0], details[0], atol=1e-3)  # the coarser bands stay the model's
