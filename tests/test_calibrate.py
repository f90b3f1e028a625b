"""The grid exposure estimator and its fit on whole images (lldiff_cli.calibrate)."""

import pytest
import torch

from lldiff_cli.calibrate import fit_exposure, fit_exposure_map
from lldiff_cli.networks.exposure import ExposureEnsemble, ExposureMap, ExposureNet, estimators, exposure_estimator


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


def test_maps_join_an_ensemble_after_its_grid_members():
    torch.manual_seed(0)
    mixed = exposure_estimator(members=2, maps=1, map_width=4, width=4, grid=(2, 2))
    assert [type(m) for m in estimators(mixed)] == [ExposureNet, ExposureNet, ExposureMap]
    assert mixed.grid == (2, 2)
    band = scene(2)
    each = torch.stack([m(band) for m in estimators(mixed)])
    assert torch.allclose(mixed(band), each.log().mean(0).exp())
    assert isinstance(exposure_estimator(members=1, maps=1, map_width=4, width=4), ExposureEnsemble)
    with pytest.raises(ValueError, match="maps must be at least 0"):
        exposure_estimator(maps=-1)
    with pytest.raises(ValueError, match="members must be at least 1"):  # maps alone would have no grid
        ExposureEnsemble(members=0, maps=2, map_width=4)


def test_an_exposure_map_reads_any_size_and_its_estimate_is_its_maps_mean():
    torch.manual_seed(0)
    net = ExposureMap(width=4)
    for h, w in ((8, 8), (24, 32), (9, 13), (40, 16)):
        band = torch.rand(2, 3, h, w) * 2 - 1
        log_map = net.log_map(band)
        assert log_map.shape == (2, 3, (h + 1) // 2, (w + 1) // 2) and bool((log_map < 0).all())
        out = net(band)
        assert out.shape == (2,) and bool(((out > 0) & (out < 1)).all())
        assert torch.allclose(out, log_map.exp().mean(dim=(1, 2, 3)))


def test_fit_exposure_map_learns_where_each_scene_is_lit():
    """Each scene's truth is lit (0.5) in a band of columns of its own width, faintly brighter in the
    dark shot too, and dim (0.1) elsewhere: the map learns which pixels are lit, so its mean lands
    on each truth's, which a constant misses by up to a factor of 1.6."""
    bands, truths = [], []
    for k in range(4):
        band = scene(k, 16, 16)
        truth = torch.full_like(band, 0.1)
        lit = slice(0, 3 + 3 * k)
        truth[..., lit] = 0.5
        band[..., lit] += 0.2
        bands.append(band)
        truths.append(truth)
    torch.manual_seed(0)
    net = ExposureMap(width=4)
    losses = fit_exposure_map(net, bands, truths, iterations=150, batch=4, lr=1e-2, jitter=0.0)
    with torch.no_grad():
        fitted = torch.cat([net(b) for b in bands])
    targets = torch.stack([t.mean() for t in truths])
    assert sum(losses[-10:]) < 0.25 * sum(losses[:10])
    assert float((fitted.log() - targets.log()).abs().max()) < 0.15
    with pytest.raises(ValueError, match="one truth per band"):
        fit_exposure_map(net, bands, truths[:3])
    with pytest.raises(ValueError, match="must be its band's size"):
        fit_exposure_map(net, bands[:1], [truths[0][..., :8]])
