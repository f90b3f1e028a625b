"""The grid exposure estimator and its fit on whole images (lldiff_cli.calibrate)."""

import pytest
import torch

from lldiff_cli.calibrate import fit_exposure
from lldiff_cli.networks.exposure import ExposureEnsemble, ExposureNet, estimators, exposure_estimator


def scene(seed: int, h: int = 24, w: int = 32) -> torch.Tensor:
    """A 1x3xhxw band in [-1, 1] of a dark image with its own layout."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, h // 4, w // 4, generator=g).repeat_interleave(4, 2).repeat_interleave(4, 3)
    return (0.05 + image * 0.15) * 2 - 1


def test_grid_estimator_reads_any_size_and_ignores_the_shots_brightness_in_its_grid():
    net = ExposureNet(width=4, grid=(2, 3))
    for h, w in ((8, 8), (24, 32), (40, 16)):
        out = net(torch.rand(2, 3, h, w) * 2 - 1)
        assert out.shape == (2,) and bool(((out > 0) & (out < 1)).all())
    band = scene(0)
    dimmer = (band + 1) / 2 * 0.5 * 2 - 1  # the same scene shot at half the light
    assert torch.allclose(ExposureNet.normalise(band), ExposureNet.normalise(dimmer), atol=1e-5)
    with pytest.raises(ValueError, match="grid must be"):
        ExposureNet(grid=(0, 3))


def test_fit_exposure_learns_each_scenes_brightness():
    bands = [scene(k) for k in range(4)]
    targets = torch.tensor([0.2, 0.6, 0.3, 0.5])
    torch.manual_seed(0)
    net = ExposureNet(width=4, grid=(2, 2))
    losses = fit_exposure(net, bands, targets, iterations=300, batch=8, lr=3e-3, jitter=0.1)
    with torch.no_grad():
        fitted = torch.cat([net(b) for b in bands])
    assert losses[-1] < 0.1 * losses[0]
    assert float((fitted.log() - targets.log()).abs().max()) < 0.15  # a constant misses by 0.7
    with pytest.raises(ValueError, match="one target per band"):
        fit_exposure(net, bands, targets[:3])
    with pytest.raises(ValueError, match="jitter must be in"):
        fit_exposure(net, bands, targets, jitter=1.0)


def test_an_ensemble_estimate_is_its_members_geometric_mean():
    torch.manual_seed(0)
    ensemble = exposure_estimator(members=3, width=4, grid=(2, 2))
    assert isinstance(ensemble, ExposureEnsemble) and ensemble.grid == (2, 2) and len(estimators(ensemble)) == 3
    band = scene(1)
    each = torch.stack([m(band) for m in estimators(ensemble)])
    assert len(set(each.flatten().tolist())) == 3  # members start apart
    assert torch.allclose(ensemble(band), each.log().mean(0).exp())
    single = exposure_estimator(width=4)
    assert isinstance(single, ExposureNet) and estimators(single) == [single]
    with pytest.raises(ValueError, match="members must be at least 1"):
        exposure_estimator(members=0)
