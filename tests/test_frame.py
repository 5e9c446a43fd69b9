"""Full-frame inference: chunking without seams, masks and flags, varying PSF, samples, bad input."""

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lsst.meas.extensions.bliss import (
    MASK_PLANES,
    BlissEncoder,
    BlissModel,
    EncoderConfig,
    FrameConfig,
    FullCatalog,
    ImageSimulator,
    PriorConfig,
    SimulatorConfig,
    SurveyConditions,
    infer_frame,
    psf_kernel_fwhm_pix,
)
from lsst.meas.extensions.bliss.catalog import empty_source_fields
from lsst.meas.extensions.bliss.inference._frame import CPU_SAMPLE_BATCH, _footprint_flags, _sample_batches

CONDITIONS = SurveyConditions.from_survey()
FWHM_PIX = CONDITIONS.psf_fwhm_pix


def random_model(stem: str = "convolution") -> BlissModel:
    """An untrained encoder whose every weight is random (the zero-initialized residual branches too),
    so that its decisions depend on its whole receptive field, and with enough detections to compare."""
    torch.manual_seed(0)
    channels = (8, 16, 32) if stem == "convolution" else (16, 32)
    encoder = BlissEncoder(
        EncoderConfig(checkerboard_groups=4, stem=stem, pixel_channels=channels, head_channels=32)
    )
    for module in encoder.modules():
        if isinstance(module, torch.nn.Conv2d):
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            torch.nn.init.normal_(module.weight, std=math.sqrt(1.0 / fan_in))
    if stem == "space_to_depth":
        with torch.no_grad():  # its random detection probabilities lie just below 0.5: detect some
            encoder.head[-1].bias[0] += 0.1
    return BlissModel(encoder.eval(), CONDITIONS, PriorConfig(), SimulatorConfig(), {})


def scene(height: int, width: int, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    size = 4 * math.ceil(max(height, width) / 4)
    simulator = ImageSimulator(
        CONDITIONS, PriorConfig(), SimulatorConfig(image_height=size, image_width=size), device="cpu"
    )
    batch = simulator.sample(1, seed=seed)
    return batch.image[0, :height, :width], batch.variance[0, :height, :width], batch.mask[0, :height, :width]


def assert_same_catalog(first, second) -> None:
    assert torch.equal(first.n_sources, second.n_sources)
    torch.testing.assert_close(first.x, second.x)
    torch.testing.assert_close(first.y, second.y)
    for name, value in first.fields.items():
        torch.testing.assert_close(value, second.fields[name], msg=name)


@pytest.mark.parametrize("stem", ["convolution", "space_to_depth"])
def test_chunked_and_single_chunk_runs_agree(stem: str) -> None:
    model = random_model(stem)
    image, variance, mask = scene(512, 509)
    mask[200:230, 100:104] |= 1 << MASK_PLANES["BAD"]
    options = {"n_samples": 3, "seed": 7, "device": "cpu"}
    chunked = infer_frame(model, image, variance, mask, FWHM_PIX, FrameConfig(chunk_pixels=96, **options))
    whole = infer_frame(model, image, variance, mask, FWHM_PIX, FrameConfig(chunk_pixels=1024, **options))
    assert chunked.status == whole.status == "ok"
    assert int(whole.catalog.n_sources[0]) > 50  # the comparison covers chunk boundaries
    assert_same_catalog(chunked.catalog, whole.catalog)
    for first, second in zip(chunked.samples, whole.samples, strict=True):
        assert_same_catalog(first, second)
    for name, params in whole.tile_params.items():
        torch.testing.assert_close(chunked.tile_params[name], params, msg=name)
    assert whole.tile_params["detection"].shape == (128, 128, 1)  # 509 columns -> 128 tiles
    assert (whole.catalog.x < 508.5).all() and (whole.catalog.y < 511.5).all()


@pytest.mark.parametrize("shrunk", ["halo_tiles", "head_margin"])
def test_too_small_a_halo_or_head_margin_would_show_seams(shrunk: str) -> None:
    """Both margins are needed: half of either changes tiles near chunk edges (with the checkerboard
    head's margin, the posterior samples)."""
    from lsst.meas.extensions.bliss.inference import _frame

    model = random_model()
    image, variance, mask = scene(256, 256)
    options = {"n_samples": 1, "seed": 3, "device": "cpu"}
    reference = infer_frame(model, image, variance, mask, FWHM_PIX, FrameConfig(**options))
    original = _frame._layout

    def shrink(*args, **kwargs):
        layout = original(*args, **kwargs)
        return dataclasses.replace(layout, **{shrunk: getattr(layout, shrunk) // 2})

    _frame._layout = shrink
    try:
        seamed = infer_frame(model, image, variance, mask, FWHM_PIX, FrameConfig(chunk_pixels=64, **options))
    finally:
        _frame._layout = original
    # Chunked runs with the full margins agree exactly (see above).
    differences = [
        (seamed.tile_params[name] - reference.tile_params[name]).abs().max() for name in reference.tile_params
    ]
    assert max(differences) > 1e-6


def test_samples_are_reproducible_and_seeded() -> None:
    model = random_model()
    image, variance, mask = scene(128, 128)
    first = infer_frame(
        model, image, variance, mask, FWHM_PIX, FrameConfig(n_samples=2, seed=1, device="cpu")
    )
    again = infer_frame(
        model, image, variance, mask, FWHM_PIX, FrameConfig(n_samples=2, seed=1, device="cpu")
    )
    other = infer_frame(
        model, image, variance, mask, FWHM_PIX, FrameConfig(n_samples=2, seed=2, device="cpu")
    )
    for sample, repeat in zip(first.samples, again.samples, strict=True):
        assert_same_catalog(sample, repeat)
    assert not torch.equal(first.samples[0].x, other.samples[0].x)
    assert not torch.equal(first.samples[0].x, first.samples[1].x)


def test_samples_do_not_depend_on_how_many_are_drawn_together() -> None:
    model = random_model()
    image, variance, mask = scene(128, 128)
    results = [
        infer_frame(
            model,
            image,
            variance,
            mask,
            FWHM_PIX,
            FrameConfig(n_samples=5, seed=4, sample_batch_size=size, device="cpu"),
        )
        for size in (1, 2, 5)
    ]
    for other in results[1:]:
        for sample, repeat in zip(results[0].samples, other.samples, strict=True):
            assert_same_catalog(sample, repeat)
    with pytest.raises(ValueError, match="sample_batch_size"):
        FrameConfig(sample_batch_size=0)


def test_sources_near_invalid_pixels_and_the_image_edge_are_flagged() -> None:
    model = random_model()
    image, variance, mask = scene(128, 128)
    mask[40:80, 60:62] |= 1 << MASK_PLANES["SAT"]
    variance[10:12, 10:12] = 0.0
    image[100, 100] = float("nan")
    result = infer_frame(model, image, variance, mask, FWHM_PIX, FrameConfig(n_samples=0, device="cpu"))
    catalog = result.catalog
    x, y = catalog.x[0], catalog.y[0]
    masked, edge = catalog.fields["flag_masked"][0], catalog.fields["flag_image_edge"][0]
    assert torch.isfinite(x).all() and torch.isfinite(catalog.fields["flux_njy"]).all()
    reach = 2 * FWHM_PIX + 2 * catalog.fields["disk_hlr_arcsec"][0].clamp(min=0) / 0.2 + 1
    near_saturated = (x > 60 - reach) & (x < 61 + reach) & (y > 40 - reach) & (y < 79 + reach)
    far_from_all = (
        ~near_saturated
        & ((x - 10.5).abs() > reach + 2)
        & ((y - 10.5).abs() > reach + 2)
        & (((x - 100).abs() > reach + 1) | ((y - 100).abs() > reach + 1))
    )
    strictly_near = (x > 58) & (x < 63) & (y > 42) & (y < 77)
    assert strictly_near.any() and masked[strictly_near].all()
    assert far_from_all.any() and not masked[far_from_all].any()
    inner = (x > 20) & (x < 107) & (y > 20) & (y < 107) & (catalog.fields["disk_hlr_arcsec"][0] < 0.5)
    assert edge[(x < 2) | (y < 2)].all() and not edge[inner].any()


def test_default_sample_batches_are_bounded_on_a_cpu() -> None:
    sparse = SimpleNamespace(absent=object())  # the four-group passes that draw samples together
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    batches = _sample_batches(FrameConfig(n_samples=40), sparse, cpu)
    assert [len(batch) for batch in batches] == [CPU_SAMPLE_BATCH, CPU_SAMPLE_BATCH, 8]
    assert [index for batch in batches for index in batch] == list(range(40))
    assert [len(batch) for batch in _sample_batches(FrameConfig(n_samples=40), sparse, cuda)] == [40]
    chosen = _sample_batches(FrameConfig(n_samples=40, sample_batch_size=32), sparse, cpu)
    assert [len(batch) for batch in chosen] == [32, 8]
    assert _sample_batches(FrameConfig(n_samples=0), sparse, cpu) == []


def test_footprint_flags_equal_a_box_by_box_check() -> None:
    generator = torch.Generator().manual_seed(3)
    height, width, n_sources = 70, 90, 300
    valid = torch.rand(height, width, generator=generator) > 0.01
    valid[30:34, :] = False  # a masked band
    fields = empty_source_fields((1, n_sources), torch.device("cpu"), torch.float32)
    fields["disk_hlr_arcsec"][0] = torch.rand(n_sources, generator=generator) * 2.0
    catalog = FullCatalog(
        height,
        width,
        torch.tensor([n_sources]),
        torch.rand(1, n_sources, generator=generator) * (width + 10) - 5,
        torch.rand(1, n_sources, generator=generator) * (height + 10) - 5,
        fields,
    )
    fwhm_pix = 2.0 + torch.rand(n_sources, generator=generator) * 3
    flags = _footprint_flags(catalog, valid, fwhm_pix, 0.2)
    for index in range(n_sources):
        col = int(catalog.x[0, index].round().clamp(0, width - 1))
        row = int(catalog.y[0, index].round().clamp(0, height - 1))
        radius = math.ceil(2.0 * fwhm_pix[index] + 2.0 * fields["disk_hlr_arcsec"][0, index] / 0.2)
        box = valid[max(0, row - radius) : row + radius + 1, max(0, col - radius) : col + radius + 1]
        assert bool(flags["flag_masked"][0, index]) == bool((~box).any())
        crosses = row - radius < 0 or col - radius < 0 or row + radius >= height or col + radius >= width
        assert bool(flags["flag_image_edge"][0, index]) == crosses


def test_configured_mask_planes_decide_what_is_invalid() -> None:
    model = random_model()
    image, variance, mask = scene(64, 64)
    mask[:, :] |= 1 << MASK_PLANES["CR"]
    default = infer_frame(model, image, variance, mask, FWHM_PIX, FrameConfig(n_samples=0, device="cpu"))
    assert default.status == "no_valid_pixels"
    without_cr = FrameConfig(n_samples=0, device="cpu", invalid_mask_planes=("BAD", "SAT"))
    assert infer_frame(model, image, variance, mask, FWHM_PIX, without_cr).status == "ok"
    with pytest.raises(ValueError, match="Unknown mask plane"):
        infer_frame(model, image, variance, mask, FWHM_PIX, FrameConfig(invalid_mask_planes=("NOPE",)))


def test_all_invalid_pixels_give_an_empty_catalog_with_a_status() -> None:
    model = random_model()
    image = torch.full((64, 80), float("nan"))
    result = infer_frame(model, image, torch.ones(64, 80), None, FWHM_PIX, FrameConfig(n_samples=2))
    assert result.status == "no_valid_pixels"
    assert int(result.catalog.n_sources[0]) == 0 and "flag_masked" in result.catalog.fields
    assert len(result.samples) == 2 and all(int(s.n_sources[0]) == 0 for s in result.samples)


def test_bad_shapes_and_sizes_are_named() -> None:
    model = random_model()
    with pytest.raises(ValueError, match=r"image \(64, 64\), variance \(64, 60\)"):
        infer_frame(model, torch.zeros(64, 64), torch.ones(64, 60), None, FWHM_PIX)
    with pytest.raises(ValueError, match=r"mask \(32, 32\)"):
        infer_frame(model, torch.zeros(64, 64), torch.ones(64, 64), torch.zeros(32, 32), FWHM_PIX)
    with pytest.raises(ValueError, match="smaller than one tile"):
        infer_frame(model, torch.zeros(3, 64), torch.ones(3, 64), None, FWHM_PIX)
    with pytest.raises(ValueError, match="2-d image"):
        infer_frame(model, torch.zeros(1, 64, 64), torch.ones(1, 64, 64), None, FWHM_PIX)


@pytest.mark.parametrize("shape", [(4, 64), (64, 4), (4, 4), (6, 40)])
def test_images_one_tile_high_or_wide_are_inferred(shape: tuple[int, int]) -> None:
    """The smallest accepted image is one tile: the checkerboard's sublattices that hold no tile
    there are skipped instead of failing inside a convolution."""
    model = random_model()
    image, variance, mask = scene(*shape)
    result = infer_frame(model, image, variance, mask, FWHM_PIX, FrameConfig(n_samples=2, device="cpu"))
    assert result.status == "ok" and len(result.samples) == 2
    assert torch.isfinite(result.catalog.x).all() and torch.isfinite(result.catalog.fields["flux_njy"]).all()


def test_a_failing_psf_model_is_named_with_its_position() -> None:
    model = random_model()
    image, variance, mask = scene(64, 64)

    def broken(x: float, y: float) -> float:
        if x > 50:
            raise RuntimeError("no PSF model here")
        return FWHM_PIX

    with pytest.raises(ValueError, match=r"failed at \(x, y\) = \(63, 0\).*no PSF model here"):
        infer_frame(model, image, variance, mask, broken, FrameConfig(psf_grid_pixels=32))
    with pytest.raises(ValueError, match=r"FWHM of nan pixels at \(x, y\) = \(0, 0\)"):
        infer_frame(model, image, variance, mask, lambda x, y: float("nan"))


def test_psf_kernels_map_to_the_model_family_and_vary_across_the_image() -> None:
    for fwhm_arcsec in (0.6, 0.9, 1.2):
        psf = CONDITIONS.psf(fwhm_arcsec)
        size = 41
        kernel = torch.fft.irfft2(
            psf.fourier_grid(size, dtype=torch.float64).to(torch.complex128), s=(size, size)
        )
        kernel = torch.roll(kernel[0], shifts=(size // 2, size // 2), dims=(0, 1)).numpy()
        assert psf_kernel_fwhm_pix(kernel, CONDITIONS) == pytest.approx(fwhm_arcsec / 0.2, rel=0.01)
    with pytest.raises(ValueError, match="finite 2-d image"):
        psf_kernel_fwhm_pix(np.full((5, 5), np.nan), CONDITIONS)

    model = random_model()
    image, variance, mask = scene(128, 256)

    def varying(x: float, y: float) -> float:
        return 3.0 + 3.0 * max(0.0, x - 128.0) / 127.0

    # The ramp leaves the untrained model's nominal PSF on purpose: run it, flagged.
    config = FrameConfig(n_samples=0, device="cpu", psf_grid_pixels=16, out_of_range="flag")
    constant = infer_frame(model, image, variance, mask, 3.0, config)
    varied = infer_frame(model, image, variance, mask, varying, config)
    # Beyond the receptive field of the ramp the conditioning is unchanged; on the ramp it follows the PSF.
    assert torch.equal(constant.tile_params["flux"][:, :4], varied.tile_params["flux"][:, :4])
    assert (constant.tile_params["flux"][:, -4:] - varied.tile_params["flux"][:, -4:]).abs().max() > 1e-3


def test_bfloat16_backbone_is_close_to_float32_and_configurable() -> None:
    model = random_model()
    image, variance, mask = scene(192, 160)
    options = {"n_samples": 0, "device": "cpu", "reuse_freed_memory": False}
    precise = infer_frame(model, image, variance, mask, FWHM_PIX, FrameConfig(precision="float32", **options))
    fast = infer_frame(model, image, variance, mask, FWHM_PIX, FrameConfig(precision="bfloat16", **options))
    logits, fast_logits = precise.tile_params["detection"], fast.tile_params["detection"]
    assert 0 < (fast_logits - logits).abs().max() < 0.05 * logits.std()
    with pytest.raises(ValueError, match="precision='float16'"):
        FrameConfig(precision="float16")


def test_chunks_of_a_side_are_balanced() -> None:
    from lsst.meas.extensions.bliss.inference import _frame

    encoder = BlissEncoder(EncoderConfig(checkerboard_groups=4))  # the packaged architecture
    # 2048 pixels with the 1 GB CPU budget: two chunks of 256 tiles, not one of 400 and one of 112.
    layout = _frame._layout(encoder, 512, 512, FrameConfig(), 1.0)
    cores = {row1 - row0 for row0, row1, _, _ in layout.chunks()}
    assert cores == {256} and len(layout.chunks()) == 4
    assert _frame._layout(encoder, 512, 300, FrameConfig(chunk_pixels=400), 1.0).core_tiles == 100
    # 4096 pixels: three chunks of 342 tiles a side.
    assert _frame._layout(encoder, 1024, 1024, FrameConfig(), 1.0).core_tiles == 342


def test_chunks_grow_as_the_backbone_narrows() -> None:
    from lsst.meas.extensions.bliss.inference import _frame

    # The space-to-depth stem's widest activation is 4 channels per pixel against 16: a 2048-pixel
    # image is one chunk and a 4096-pixel one four, within the same memory budget.
    config = EncoderConfig(
        checkerboard_groups=4, stem="space_to_depth", pixel_channels=(16, 32), head_channels=32
    )
    encoder = BlissEncoder(config)
    assert config.widest_activation_channels == 4.0
    assert len(_frame._layout(encoder, 512, 512, FrameConfig(), 1.0).chunks()) == 1
    assert _frame._layout(encoder, 1024, 1024, FrameConfig(), 1.0).core_tiles == 512


def test_reusing_freed_memory_is_a_one_time_setting() -> None:
    from lsst.meas.extensions.bliss import reuse_freed_memory

    first = reuse_freed_memory()
    assert isinstance(first, bool) and reuse_freed_memory() is first
