import pytest
import torch

from lldiff_cli.tiling import TILE_EXPOSURE_POWER, enhance_tensor, pad_to_multiple, tile_grid, tile_span, unpad


class Identity:
    """A 'model' that returns its input: tiling must give the input back, seams included."""

    multiple = 8
    levels = 2

    def __init__(self):
        self.calls = []

    def enhance(self, x, exposure=None, **kwargs):
        assert x.shape[-1] % 8 == 0 and x.shape[-2] % 8 == 0
        self.calls.append(tuple(x.shape))
        return x


class Brighten(Identity):
    def enhance(self, x, exposure=None, **kwargs):
        super().enhance(x)
        return (x * 2).clamp(0, 1)


def test_pad_unpad_round_trip_any_size():
    for h, w in [(1, 1), (5, 7), (8, 8), (33, 17)]:
        x = torch.rand(1, 3, h, w)
        padded, size = pad_to_multiple(x, 8)
        assert padded.shape[-2] % 8 == 0 and padded.shape[-1] % 8 == 0
        assert torch.equal(unpad(padded, size), x)


@pytest.mark.parametrize("length, tile, overlap, multiple", [(1000, 256, 32, 1), (1000, 640, 64, 1), (4000, 768, 64, 16),
                                                          (3000, 768, 64, 16), (769, 768, 64, 16), (1200, 512, 0, 8)])
def test_tiles_cover_the_side_sharing_the_overlap_and_little_more(length, tile, overlap, multiple):
    size, starts = tile_span(length, tile, overlap, multiple)
    assert size <= tile and size % multiple == 0
    assert starts[0] == 0 and starts[-1] == length - size
    shared = [size - (b - a) for a, b in zip(starts, starts[1:])]
    assert all(s >= overlap for s in shared)
    # As few tiles as `tile`-pixel ones need, sharing no more than rounding to the multiple adds.
    assert len(starts) == -(-(length - overlap) // (tile - overlap))
    assert all(s <= overlap + 2 * multiple for s in shared)


def test_a_side_that_fits_is_one_tile():
    assert tile_span(100, 256, 32) == (100, [0])
    assert tile_span(1000, 532, 64) == (532, [0, 468])
    assert tile_span(1000, 640, 64) == (532, [0, 468])  # two of 532, not two of 640 sharing 280


def test_the_grid_is_what_enhance_tensor_runs():
    model = Identity()
    x = torch.rand(1, 3, 70, 100)
    assert tile_grid(model, 70, 100) is None
    grid = tile_grid(model, 70, 100, tile=32, overlap=8)
    assert grid.count == len(grid.ys) * len(grid.xs) > 4 and grid.height <= 32 and grid.width <= 32
    progress = []
    enhance_tensor(model, x, tile=32, overlap=8, on_tile=lambda done, total: progress.append((done, total)))
    assert model.calls == [(1, 3, grid.height, grid.width)] * grid.count
    assert progress == [(k, grid.count) for k in range(1, grid.count + 1)]
    untiled = []
    enhance_tensor(Identity(), x, on_tile=lambda done, total: untiled.append((done, total)))
    assert untiled == [(1, 1)]


def test_identity_model_gives_back_the_input_untiled_and_tiled():
    x = torch.rand(1, 3, 37, 61)
    model = Identity()
    torch.testing.assert_close(enhance_tensor(model, x), x, atol=1e-6, rtol=0)
    tiled = Identity()
    out = enhance_tensor(tiled, x, tile=16, overlap=4)
    assert len(tiled.calls) > 4
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)


def test_tiles_in_batches_give_the_same_result():
    x = torch.rand(1, 3, 50, 70)
    one, three = Brighten(), Brighten()
    a = enhance_tensor(one, x, tile=24, overlap=8)
    b = enhance_tensor(three, x, tile=24, overlap=8, batch_size=3)
    torch.testing.assert_close(a, b)
    assert len(three.calls) == -(-len(one.calls) // 3) and three.calls[0][0] == 3


def test_pointwise_model_has_no_seams_when_tiled():
    x = torch.rand(1, 3, 50, 70)
    whole = enhance_tensor(Brighten(), x)
    tiled = enhance_tensor(Brighten(), x, tile=24, overlap=8)
    torch.testing.assert_close(tiled, whole, atol=1e-6, rtol=0)


def test_max_pixels_triggers_tiling():
    model = Identity()
    enhance_tensor(model, torch.rand(1, 3, 64, 64), max_pixels=1000, tile=32, overlap=8)
    assert all(s[-1] <= 32 and s[-2] <= 32 for s in model.calls)


class Recorder(Identity):
    """Records the exposure each call is given; auto exposure is 0.4."""

    def __init__(self):
        super().__init__()
        self.exposures = []

    def auto_exposure(self, image):
        return torch.tensor([0.4])

    def enhance(self, x, exposure=None, **kwargs):
        self.exposures.append(exposure)
        return super().enhance(x)


def test_each_tile_is_asked_for_its_share_of_the_brightness():
    """The model renders a tile at the mean grey it is given, so a tile darker than the image
    gets a lower target: exposure * (tile mean / image mean) ** TILE_EXPOSURE_POWER."""
    x = torch.cat([torch.full((1, 3, 32, 32), 0.05), torch.full((1, 3, 32, 32), 0.2)], dim=-1)
    model = Recorder()
    enhance_tensor(model, x, tile=32, overlap=0, exposure=0.3)
    expected = [0.3 * (m / 0.125) ** TILE_EXPOSURE_POWER for m in (0.05, 0.2)]
    torch.testing.assert_close(torch.cat(model.exposures), torch.tensor(expected))
    batched = Recorder()
    enhance_tensor(batched, x, tile=32, overlap=0, batch_size=2, exposure=0.4)
    torch.testing.assert_close(batched.exposures[0], torch.cat(model.exposures) / 0.3 * 0.4)
    black = Recorder()  # a black image: every tile at the image's target
    enhance_tensor(black, torch.zeros(1, 3, 32, 64), tile=32, overlap=0, exposure=0.3)
    torch.testing.assert_close(torch.cat(black.exposures), torch.tensor([0.3, 0.3]))


def test_auto_exposure_is_one_rule_tiled_or_not():
    """enhance_image decides the target once (model.auto_exposure, 0.4 here): whole, the image
    gets it; tiled, its tiles get their shares of it."""
    from lldiff_cli.enhance import EnhanceSettings, enhance_image

    x = torch.cat([torch.full((1, 3, 32, 32), 0.05), torch.full((1, 3, 32, 32), 0.2)], dim=-1)
    cpu = torch.device("cpu")
    whole, tiled = Recorder(), Recorder()
    enhance_image(whole, x, EnhanceSettings(precision="float32"), cpu)
    enhance_image(tiled, x, EnhanceSettings(precision="float32", tile=32, overlap=0), cpu)
    assert whole.exposures == [pytest.approx(0.4)]
    expected = [0.4 * (m / 0.125) ** TILE_EXPOSURE_POWER for m in (0.05, 0.2)]
    torch.testing.assert_close(torch.cat(tiled.exposures), torch.tensor(expected))


def test_tiled_real_model_runs(tiny_model):
    x = torch.rand(1, 3, 40, 56) * 0.3
    out = enhance_tensor(tiny_model, x, tile=24, overlap=8, seed=0)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_a_real_model_gives_the_same_tiles_in_any_batch_size(tiny_model, eta):
    """Each tile's noise comes from its own generator, seeded alike: batching changes only the speed."""
    torch.manual_seed(3)
    x = torch.rand(1, 3, 56, 72) * 0.3
    one = enhance_tensor(tiny_model, x, tile=24, overlap=8, seed=5, eta=eta, ensemble=2)
    four = enhance_tensor(tiny_model, x, tile=24, overlap=8, seed=5, eta=eta, ensemble=2, batch_size=4)
    torch.testing.assert_close(one, four, atol=1e-5, rtol=0)


def test_the_tiling_bound_follows_the_band_the_network_sees():
    from lldiff_cli.tiling import default_max_pixels, default_tile

    assert default_max_pixels(2) == 589_824 and default_tile(2) == 768
    assert default_max_pixels(0) == 36_864 and default_tile(0) == 192
    pixel_space = Identity()
    pixel_space.levels = 0
    enhance_tensor(pixel_space, torch.rand(1, 3, 400, 600))
    assert len(pixel_space.calls) > 1 and all(s[-1] <= 192 and s[-2] <= 192 for s in pixel_space.calls)
