from dataclasses import replace

import pytest
import torch

from lldiff_cli.checkpoints import load_checkpoint, load_model, model_from_checkpoint, save_checkpoint, sha256_of
from lldiff_cli.errors import LldiffError
from lldiff_cli.model import WaveletDiffusion, mirror
from tests.conftest import tiny_config


@pytest.mark.parametrize("levels", [0, 1, 2])
def test_enhance_shapes_and_range(levels):
    model = WaveletDiffusion(tiny_config(levels=levels)).eval()
    m = model.multiple
    assert m == 2 ** levels * 2
    out = model.enhance(torch.rand(2, 3, 2 * m, 3 * m), seed=1)
    assert out.shape == (2, 3, 2 * m, 3 * m)
    assert out.min() >= 0 and out.max() <= 1


def test_enhance_is_reproducible_with_a_seed_and_varies_without(tiny_model):
    x = torch.rand(1, 3, 16, 16)
    a = tiny_model.enhance(x, seed=3, eta=1.0)
    b = tiny_model.enhance(x, seed=3, eta=1.0)
    c = tiny_model.enhance(x, seed=4, eta=1.0)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def shared_copies(model, x, exposures, seed=5):
    """What enhance's self-ensemble computes: copy k's low band restored from the mirrored dark
    band at exposures[k] and mirrored back, the bands averaged, the details restored once."""
    gen = torch.Generator().manual_seed(seed)
    steps, eta = model.config.steps, model.config.eta
    band, lls, highs = model.decompose(x)
    bands = [mirror(model.restore_band(mirror(band, k), e_k.reshape(1), steps=steps, eta=eta, generator=gen), k)
             for k, e_k in enumerate(exposures)]
    restored = sum(bands) / len(bands)
    return model.reconstruct(restored, model.restore_details(restored, lls, highs)).clamp(0, 1)


def test_the_low_band_of_a_mirrored_image_is_the_mirrored_low_band(tiny_model):
    """What lets the ensemble's copies share one band average (sizes are multiples of 2**levels)."""
    x = torch.rand(1, 3, 16, 24)
    for k in range(4):
        torch.testing.assert_close(tiny_model.decompose(mirror(x, k))[0], mirror(tiny_model.decompose(x)[0], k))


def test_self_ensemble_averages_the_mirrored_runs(tiny_model):
    x = torch.rand(1, 3, 16, 24)
    assert torch.equal(tiny_model.enhance(x, seed=5, ensemble=1), tiny_model.enhance(x, seed=5))
    e = tiny_model.auto_exposure(x)
    steps, eta = tiny_model.config.steps, tiny_model.config.eta
    one = tiny_model.sample(x, e, steps=steps, eta=eta, generator=torch.Generator().manual_seed(5)).clamp(0, 1)
    assert torch.allclose(tiny_model.enhance(x, seed=5, ensemble=1), one, atol=1e-6)
    assert torch.allclose(tiny_model.enhance(x, seed=5, ensemble=4), shared_copies(tiny_model, x, [e] * 4), atol=1e-6)
    assert torch.allclose(tiny_model.enhance(x, seed=5, ensemble=2), shared_copies(tiny_model, x, [e] * 2), atol=1e-6)
    # the mirrored copy is a run of its own (a tiny random net is not mirror-symmetric)
    assert not torch.allclose(tiny_model.enhance(x, seed=5, ensemble=2), one)
    with pytest.raises(LldiffError, match="ensemble must be one of 1, 2, 4, got 3"):
        tiny_model.enhance(x, ensemble=3)
    with pytest.raises(LldiffError, match="ensemble must be one of 1, 2, 4, got 0"):
        replace(tiny_model.config, ensemble=0).validate()


def test_exposure_spread_renders_each_copy_at_its_own_brightness(exposure_aware_model):
    """exposure_spread s: copy k of n renders at exposure * (1 + s * (2k - (n - 1)) / (n - 1))."""
    tiny_model = exposure_aware_model
    x = torch.rand(1, 3, 16, 24) * 0.3
    unspread = {n: tiny_model.enhance(x, seed=5, ensemble=n, exposure=0.4) for n in (1, 4)}
    tiny_model.config = replace(tiny_model.config, exposure_spread=0.3)

    def average_of_copies(exposures):  # copy k mirrored and rendered at exposures[k], seed 5
        return shared_copies(tiny_model, x, exposures)

    for ratios in ([0.7, 0.9, 1.1, 1.3], [0.7, 1.3]):
        out = tiny_model.enhance(x, seed=5, ensemble=len(ratios), exposure=0.4)
        assert torch.allclose(out, average_of_copies([torch.tensor(0.4 * r) for r in ratios]), atol=1e-6)
    assert not torch.allclose(tiny_model.enhance(x, seed=5, ensemble=4, exposure=0.4), unspread[4])
    # near white the spread narrows so that the brightest copy stays at 1 and the mean at the target
    e = torch.tensor(0.9)
    narrowed = [e * (1 - (1 / e - 1)), e * (1 + (1 / e - 1))]  # 0.8 and 1, as float32 computes them
    assert torch.allclose(tiny_model.enhance(x, seed=5, ensemble=2, exposure=0.9), average_of_copies(narrowed),
                          atol=1e-6)
    # one copy renders at the target itself
    assert torch.equal(tiny_model.enhance(x, seed=5, ensemble=1, exposure=0.4), unspread[1])
    for bad in (-0.1, 1.0):
        with pytest.raises(LldiffError, match="exposure_spread must be in"):
            replace(tiny_model.config, exposure_spread=bad).validate()


def test_refiner_starts_as_the_identity_and_runs_once_after_the_ensemble():
    torch.manual_seed(0)
    plain = WaveletDiffusion(tiny_config()).eval()
    refined = WaveletDiffusion(tiny_config(refiner={"width": 4, "blocks": 1})).eval()
    missing, unexpected = refined.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("refiner.") for k in missing)
    x = torch.rand(1, 3, 16, 24) * 0.3
    # Its last convolution starts at zero: a model grown with a refiner gives the old output.
    assert torch.equal(refined.enhance(x, seed=5, ensemble=2), plain.enhance(x, seed=5, ensemble=2))
    torch.nn.init.normal_(refined.refiner.head.weight, std=0.1)
    out = refined.enhance(x, seed=5, ensemble=2)
    assert not torch.allclose(out, plain.enhance(x, seed=5, ensemble=2))
    average = plain.enhance(x, seed=5, ensemble=2)  # no clamping happens here: the outputs lie inside [0, 1]
    assert 0 < average.min() and average.max() < 1
    assert torch.allclose(out, refined.refiner(average, x).clamp(0, 1), atol=1e-6)


def test_mirror_is_its_own_inverse():
    x = torch.arange(24.0).reshape(1, 1, 4, 6)
    for k in range(4):
        assert torch.equal(mirror(mirror(x, k), k), x)
    assert torch.equal(mirror(x, 1)[..., 0], x[..., -1]) and torch.equal(mirror(x, 2)[..., 0, :], x[..., -1, :])


def test_enhance_rejects_bad_sizes_and_exposures(tiny_model):
    with pytest.raises(LldiffError, match="divisible by 8"):
        tiny_model.enhance(torch.rand(1, 3, 12, 16))
    with pytest.raises(LldiffError, match=r"exposure must be in \(0, 1\)"):
        tiny_model.enhance(torch.rand(1, 3, 16, 16), exposure=1.5)


def test_decompose_reconstruct_round_trip(tiny_model):
    x = torch.rand(1, 3, 16, 24)
    band, lls, highs = tiny_model.decompose(x)
    assert band.shape == (1, 3, 4, 6) and band.abs().max() <= 1 + 1e-6
    torch.testing.assert_close(tiny_model.reconstruct(band, highs), x, atol=1e-6, rtol=0)


def test_loss_terms_are_named_finite_and_differentiable(tiny_model):
    tiny_model.train()
    terms = tiny_model.loss(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32),
                            generator=torch.Generator().manual_seed(0))
    assert set(terms) == {"exposure", "anchor", "noise", "x0", "detail", "tv", "content", "dfpl"}
    total = sum(terms.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in tiny_model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_eps_prediction_and_no_anchor_variant():
    model = WaveletDiffusion(tiny_config(prediction="eps", anchor=None))
    terms = model.loss(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))
    assert "anchor" not in terms and torch.isfinite(sum(terms.values()))
    assert model.eval().enhance(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)


def test_exposure_knob_reaches_the_output(tiny_model):
    # Fresh residual branches start at zero; give them weights so the knob's path is live.
    with torch.no_grad():
        for p in tiny_model.parameters():
            if p.abs().max() == 0:
                p.normal_(0, 0.1)
    x = torch.rand(1, 3, 16, 16) * 0.2
    a = tiny_model.enhance(x, exposure=0.2)
    b = tiny_model.enhance(x, exposure=0.8)
    assert not torch.equal(a, b)


def test_checkpoint_round_trip(tmp_path, tiny_model):
    path = tmp_path / "m.pt"
    save_checkpoint(tiny_model, path)
    loaded = load_model(path)
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(loaded.enhance(x, seed=0), tiny_model.enhance(x, seed=0))
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_card_checks_sha256_and_names_bad_files(tmp_path, tiny_model):
    weights = tmp_path / "w.pt"
    save_checkpoint(tiny_model, weights)
    card = tmp_path / "card.yaml"
    card.write_text(f"weights: w.pt\nsha256: {sha256_of(weights)}\n")
    assert isinstance(load_model(card), WaveletDiffusion)
    card.write_text(f"weights: w.pt\nsha256: {'de' * 32}\n")
    with pytest.raises(LldiffError, match="sha256 does not match"):
        load_model(card)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(LldiffError, match="bad.pt: not an lldiff checkpoint") as info:
        load_model(tmp_path / "bad.pt")
    assert "\n" not in str(info.value)  # one line, not torch's page of advice
    with pytest.raises(LldiffError, match="model file not found"):
        load_model(tmp_path / "missing.pt")


def test_a_card_loads_only_weights_in_its_own_folder(tmp_path, tiny_model):
    """A card names a file beside it; '..' or an absolute path would load any file on the disk."""
    save_checkpoint(tiny_model, tmp_path / "elsewhere" / "x.pt")
    digest = sha256_of(tmp_path / "elsewhere" / "x.pt")
    (tmp_path / "models").mkdir()
    card = tmp_path / "models" / "card.yaml"
    for weights in ("../elsewhere/x.pt", str(tmp_path / "elsewhere" / "x.pt")):
        card.write_text(f"weights: {weights}\nsha256: {digest}\n")
        with pytest.raises(LldiffError, match="card.yaml: .*inside the card's folder") as info:
            load_model(card)
        assert "\n" not in str(info.value)
    (tmp_path / "models" / "link.pt").symlink_to(tmp_path / "elsewhere" / "x.pt")  # resolved, not trusted
    card.write_text(f"weights: link.pt\nsha256: {digest}\n")
    with pytest.raises(LldiffError, match="inside the card's folder"):
        load_model(card)


@pytest.mark.parametrize("sha", ["0", '""', "null", "deadbeef", "[1, 2]"])
def test_a_card_must_carry_the_weights_real_sha256(tmp_path, tiny_model, sha):
    save_checkpoint(tiny_model, tmp_path / "w.pt")
    card = tmp_path / "card.yaml"
    card.write_text(f"weights: w.pt\nsha256: {sha}\n")
    with pytest.raises(LldiffError, match="card.yaml: .*sha256 must be the 64 hex digits"):
        load_model(card)
    card.write_text("weights: w.pt\n")
    with pytest.raises(LldiffError, match="card.yaml: .*sha256 must be the 64 hex digits"):
        load_model(card)
    card.write_text(f"weights: w.pt\nsha256: {'ab' * 32}\n")
    with pytest.raises(LldiffError, match="sha256 does not match the card"):
        load_model(card)


@pytest.mark.parametrize("write, reason", [
    (lambda card: card.write_text("weights: 12\nsha256: x\n"), "'weights' must be"),
    (lambda card: card.write_text("weights: [a.pt, b.pt]\n"), "'weights' must be"),
    (lambda card: card.write_text("weights:\n"), "'weights' must be"),
    (lambda card: card.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary"), "not a text file"),
    (lambda card: card.mkdir(), "is a folder"),
    (lambda card: card.write_text("- a list\n"), "a model card is a mapping of keys, got a list"),
])
def test_a_bad_card_is_one_line_naming_it(tmp_path, write, reason):
    card = tmp_path / "x.yaml"
    write(card)
    with pytest.raises(LldiffError, match=reason) as info:
        load_model(card)
    assert str(info.value).startswith(f"{card}") and "\n" not in str(info.value)


def test_a_file_that_is_no_checkpoint_is_one_line_saying_so(tmp_path, tiny_model):
    from PIL import Image

    (tmp_path / "text.pt").write_text("hello, not weights\n")
    Image.new("RGB", (8, 8)).save(tmp_path / "some.png")
    for path in (tmp_path / "text.pt", tmp_path / "some.png"):
        with pytest.raises(LldiffError) as info:
            load_model(path)
        assert str(info.value) == f"{path}: not an lldiff checkpoint (not a file torch.save wrote)"
    torch.save({"model": tiny_model}, tmp_path / "pickled.pt")  # a whole pickled module, not weights
    with pytest.raises(LldiffError) as info:
        load_model(tmp_path / "pickled.pt")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'pickled.pt'}: not an lldiff checkpoint")
    assert "\n" not in message and "weights_only" not in message and "arbitrary code" not in message
    save_checkpoint(tiny_model, tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:len(data) // 2])  # a truncated download
    with pytest.raises(LldiffError, match="cut.pt: not a readable lldiff checkpoint") as info:
        load_model(tmp_path / "cut.pt")
    assert "\n" not in str(info.value)


def test_checkpoint_with_wrong_weights_is_a_clear_error(tmp_path, tiny_model):
    path = tmp_path / "m.pt"
    save_checkpoint(tiny_model, path)
    payload = load_checkpoint(path)
    payload["config"]["unet"]["width"] = 16
    with pytest.raises(LldiffError, match="weights do not fit"):
        model_from_checkpoint(payload)
    payload["config"]["bogus"] = 1
    with pytest.raises(LldiffError, match="does not match this lldiff version"):
        model_from_checkpoint(payload)


@pytest.mark.parametrize("change, message", [
    (lambda p: p["config"]["unet"].update(depth=3), "unexpected keyword argument 'depth'"),
    (lambda p: p["config"].update(levels="2"), "levels"),
    (lambda p: p["config"].update(hfrm=None), "hfrm"),
    (lambda p: p.pop("config"), "config"),
    (lambda p: p.pop("state_dict"), "no weights"),
])
def test_a_checkpoint_from_another_version_is_one_error_line(tmp_path, tiny_model, change, message):
    save_checkpoint(tiny_model, tmp_path / "m.pt")
    payload = load_checkpoint(tmp_path / "m.pt")
    change(payload)
    with pytest.raises(LldiffError, match=message) as info:
        model_from_checkpoint(payload, source="m.pt")
    assert str(info.value).startswith("m.pt: ")


def test_auto_exposure_shrinks_towards_the_prior(tiny_model):
    from dataclasses import replace

    band = torch.rand(2, 3, 8, 8) * 0.4 - 1  # dark: mean grey about 0.1
    raw = tiny_model.estimate_exposure(band)
    tiny_model.config = replace(tiny_model.config, exposure_prior=0.4, exposure_shrink=0.0)
    torch.testing.assert_close(tiny_model.estimate_exposure(band), torch.full((2,), 0.4))
    tiny_model.config = replace(tiny_model.config, exposure_shrink=0.5)
    torch.testing.assert_close(tiny_model.estimate_exposure(band), 0.4 + 0.5 * (raw - 0.4))
    with pytest.raises(LldiffError, match="exposure_prior must be in"):
        replace(tiny_model.config, exposure_prior=1.5).validate()


def test_auto_exposure_never_darkens_the_input(tiny_model):
    """An image already brighter than the target keeps its own mean grey (enhance does not dim it)."""
    from dataclasses import replace

    tiny_model.config = replace(tiny_model.config, exposure_prior=0.4, exposure_shrink=0.0)
    image = torch.cat([torch.full((1, 3, 16, 16), 0.1), torch.rand(1, 3, 16, 16) * 0.2 + 0.6])
    torch.testing.assert_close(tiny_model.auto_exposure(image), torch.stack([torch.tensor(0.4), image[1].mean()]))
    band = tiny_model.decompose(image)[0]
    torch.testing.assert_close(tiny_model.estimate_exposure(band), tiny_model.auto_exposure(image))


def test_hfrm_context_path_keeps_shapes_on_odd_bands():
    from lldiff_cli.networks.hfrm import HFRM

    torch.manual_seed(0)
    hfrm = HFRM(image_channels=3, guide_channels=6, width=8, dilations=(1, 2), heads=2, scales=2)
    for h, w in ((13, 21), (8, 8), (50, 76)):
        high, guide = torch.randn(1, 9, h, w), torch.randn(1, 6, h, w)
        out = hfrm(high, guide)
        assert out.shape == high.shape
        # The output layer starts at zero: a fresh HFRM passes the bands through.
        assert torch.equal(out, high)
    model = WaveletDiffusion(tiny_config(hfrm={"width": 8, "dilations": [1], "heads": 2, "scales": 1})).eval()
    assert model.enhance(torch.rand(1, 3, 32, 48) * 0.2).shape == (1, 3, 32, 48)


def test_detail_gain_is_the_brightness_ratio():
    from lldiff_cli.model import detail_gain

    dark = torch.full((1, 3, 8, 8), 0.05) * 2 - 1          # scaled low band of a 0.05 grey image
    bright = torch.full((1, 3, 8, 8), 0.40) * 2 - 1
    gain = detail_gain(bright, dark, eps=0.0)
    assert gain.shape == (1, 1, 8, 8)
    assert torch.allclose(gain, torch.full_like(gain, 8.0))
    assert float(detail_gain(bright, torch.full_like(dark, -1.0)).max()) == pytest.approx(21.0)  # (0.4 + eps) / eps
    assert float(detail_gain(bright, torch.full_like(dark, -1.0), cap=10.0).max()) == 10.0


def test_gated_hfrm_starts_almost_shut_and_passes_clean_detail_when_open():
    from lldiff_cli.networks.hfrm import HFRM

    torch.manual_seed(0)
    hfrm = HFRM(image_channels=3, guide_channels=6, width=8, dilations=(1,), heads=2, gain=True)
    high, guide = torch.randn(1, 9, 12, 12), torch.randn(1, 6, 12, 12)
    gain = torch.full((1, 1, 12, 12), 10.0)
    out = hfrm(high, guide, gain)
    assert torch.allclose(out, torch.sigmoid(torch.tensor(-4.0)) * 10 * high)
    with torch.no_grad():
        hfrm.out.bias[9:] = 20.0  # gate open: the amplified detail passes through
    assert torch.allclose(hfrm(high, guide, gain), 10 * high, atol=1e-4)
    with pytest.raises(ValueError, match="pass gain"):
        hfrm(high, guide)
    model = WaveletDiffusion(tiny_config(hfrm={"width": 8, "dilations": [1], "heads": 2, "gain": True})).eval()
    assert model.enhance(torch.rand(1, 3, 32, 48) * 0.2).shape == (1, 3, 32, 48)
    dark, bright = torch.rand(2, 3, 32, 32) * 0.2, torch.rand(2, 3, 32, 32)
    assert all(torch.isfinite(v) for v in model.train().loss(dark, bright).values())


def test_unet_self_attention_matches_the_written_out_formula():
    from lldiff_cli.networks.unet import SelfAttention

    torch.manual_seed(0)
    attn = SelfAttention(channels=8, heads=2)
    torch.nn.init.normal_(attn.proj.weight)  # the projection starts at zero: open it
    x = torch.randn(2, 8, 3, 5)
    q, k, v = attn.qkv(attn.norm(x)).reshape(2, 3, 2, 4, 15).unbind(1)  # N x heads x dims x tokens
    weights = torch.softmax(q.transpose(-1, -2) @ k / 4 ** 0.5, dim=-1)  # N x heads x tokens x tokens
    expected = x + attn.proj((weights @ v.transpose(-1, -2)).transpose(-1, -2).reshape(2, 8, 3, 5))
    assert torch.allclose(attn(x), expected, atol=1e-5)


def test_a_half_precision_model_gives_the_float32_output(exposure_aware_model):
    """--precision float16 (CUDA) casts the model with .half(); the CPU runs float16 too. The
    timestep embedding must follow the weights' dtype, and the schedule's 1 - abar, which is 0
    in float16 near t = 0 (abar = 0.9999), is computed in float32."""
    from dataclasses import replace

    model = exposure_aware_model
    model.config = replace(model.config, spacing="leading", steps=4)  # leading visits t = 0
    x = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(0)) * 0.3
    full = model.enhance(x, exposure=0.4, seed=1)
    half = model.half().enhance(x.half(), exposure=0.4, seed=1)
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    assert (half.float() - full).abs().max() < 0.02
