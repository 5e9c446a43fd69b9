"""Variational factors, input normalization, encoder, checkerboard and training loss."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from lsst.meas.extensions.bliss import (
    MASK_PLANES,
    BlissEncoder,
    EncoderConfig,
    ImageSimulator,
    PriorConfig,
    SimulatorConfig,
    SurveyConditions,
    TileRandomness,
    checkerboard_groups,
    make_factors,
    make_tile_truth,
    prepare_inputs,
)
from lsst.meas.extensions.bliss.network import sample_sources
from lsst.meas.extensions.bliss.network._normalize import (
    DEFAULT_INVALID_MASK_PLANES,
    N_INPUT_CHANNELS,
    _noise_units,
    invalid_mask_bits,
    noise_scale,
)
from lsst.meas.extensions.bliss.network._random import _as_int32, _mix32, _mix32_tensor

CONDITIONS = SurveyConditions.from_survey()
TINY = EncoderConfig(pixel_channels=(8, 8, 16), tile_blocks=1, head_channels=16)


def simulated_batch(seed: int = 0, size: int = 32, batch: int = 4, density: float = 2000.0):
    simulator = ImageSimulator(
        CONDITIONS,
        PriorConfig(source_density_per_arcmin2=density),
        SimulatorConfig(image_height=size, image_width=size, psf_fwhm_range_arcsec=(0.6, 1.2)),
        device="cpu",
    )
    return simulator.sample(batch, seed=seed)


def inputs_and_truth(encoder: BlissEncoder, batch):
    inputs = prepare_inputs(batch.image, batch.variance, batch.mask, batch.psf_fwhm_arcsec / 0.2)
    return inputs, make_tile_truth(encoder, batch.truth_tiles, inputs.flux_scale_njy, 0.2)


def test_each_factor_has_consistent_shapes_and_finite_log_prob() -> None:
    torch.manual_seed(0)
    encoder = BlissEncoder(TINY)
    batch = simulated_batch()
    _, truth = inputs_and_truth(encoder, batch)
    for factor in encoder.factors:
        value = truth.values[factor.name]
        assert value.shape[:3] == (4, 8, 8)
        params = torch.randn(4, 8, 8, factor.n_params)
        log_prob = factor.log_prob(params, value)
        assert log_prob.shape == (4, 8, 8) and torch.isfinite(log_prob).all(), factor.name
        assert factor.mode(params).shape == value.shape
        uniform = torch.rand(4, 8, 8, factor.dims, generator=torch.Generator().manual_seed(1))
        sample = factor.sample(params, uniform)
        assert sample.shape == value.shape and torch.isfinite(sample).all(), factor.name


def test_loss_terms_are_gated_on_the_truth() -> None:
    torch.manual_seed(0)
    encoder = BlissEncoder(TINY)
    empty = simulated_batch(density=1e-6)
    inputs, truth = inputs_and_truth(encoder, empty)
    assert not truth.present.any()
    log_prob = encoder.log_prob(inputs, truth)
    for name, value in log_prob.items():
        if name == "detection":
            assert (value < 0).all()
        else:
            assert torch.equal(value, torch.zeros_like(value)), name  # no source: only detection counts
    stars = simulated_batch(density=3000.0)
    stars.truth_tiles.fields["is_galaxy"].zero_()
    inputs, truth = inputs_and_truth(encoder, stars)
    log_prob = encoder.log_prob(inputs, truth)
    assert (log_prob["flux"] != 0).any() and torch.equal(log_prob["disk_hlr"], torch.zeros(4))


@pytest.mark.parametrize("size", [32, 28])
@pytest.mark.parametrize("n_groups", [1, 2, 4])
def test_log_prob_on_group_sublattices_equals_the_dense_head(n_groups: int, size: int) -> None:
    """The loss evaluates each colour group's head only on that group's tiles (stacked in one call
    when the sublattices are equal, an even number of tiles a side; one call each otherwise); the
    result is the dense head's, masked to the group, as teacher forcing defines it."""
    torch.manual_seed(0)
    encoder = BlissEncoder(dataclasses.replace(TINY, checkerboard_groups=n_groups)).eval()
    inputs, truth = inputs_and_truth(encoder, simulated_batch(density=3000.0, size=size))
    with torch.no_grad():
        projected = encoder.head_features(encoder.features(inputs))
        groups = encoder._groups(projected)
        gates = {"always": torch.ones_like(truth.present), "source": truth.present, "galaxy": truth.is_galaxy}
        dense = {factor.name: torch.zeros(projected.shape[0]) for factor in encoder.factors}
        for group in range(n_groups):
            params = encoder._group_params(projected, encoder._context(truth.values, groups < group))
            for factor in encoder.factors:
                term = factor.log_prob(params[factor.name], truth.values[factor.name])
                dense[factor.name] += (term * (gates[factor.gate] & (groups == group))).sum(dim=(1, 2))
        sparse = encoder.log_prob(inputs, truth)
    for name, value in dense.items():
        torch.testing.assert_close(sparse[name], value, rtol=1e-5, atol=1e-3)


def test_mixed_precision_log_prob_stays_close_to_float32_and_has_float32_gradients() -> None:
    """Training with a bfloat16 backbone and head (`TrainingConfig.backbone_precision`): the
    factors' parameters and log-probabilities stay float32 and close to the float32 ones."""
    torch.manual_seed(0)
    encoder = BlissEncoder(TINY)
    inputs, truth = inputs_and_truth(encoder, simulated_batch(density=3000.0))
    with torch.no_grad():
        exact = encoder.log_prob(inputs, truth)
    mixed = encoder.log_prob(inputs, truth, torch.bfloat16)
    for name, value in exact.items():
        assert mixed[name].dtype == torch.float32, name
        scale = float(value.abs().max()) + 1.0
        assert float((mixed[name].detach() - value).abs().max()) <= 0.05 * scale, name
    sum(value.sum() for value in mixed.values()).backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.dtype == torch.float32, name
        assert torch.isfinite(parameter.grad).all(), name


def test_loss_weights_scale_one_factor_term() -> None:
    """A factor's weight multiplies its term only; the logged terms stay unweighted."""
    torch.manual_seed(0)
    encoder = BlissEncoder(TINY)
    inputs, truth = inputs_and_truth(encoder, simulated_batch(density=3000.0))
    plain, terms = encoder.loss(inputs, truth)
    weighted, weighted_terms = encoder.loss(inputs, truth, {"detection": 3.0})
    torch.testing.assert_close(weighted, plain + 2.0 * terms["detection"])
    assert weighted_terms == terms
    with pytest.raises(ValueError, match="unknown factors \\['detections'\\]"):
        encoder.loss(inputs, truth, {"detections": 2.0})


def test_factor_registry_validation() -> None:
    with pytest.raises(ValueError, match="Unknown variational factor"):
        make_factors(["detection", "location", "colour"])
    with pytest.raises(ValueError, match="must include"):
        make_factors(["detection", "flux"])
    minimal = BlissEncoder(
        EncoderConfig(
            factors=("detection", "location", "flux"),
            pixel_channels=(4, 4, 8),
            tile_blocks=0,
            head_channels=8,
        )
    )
    assert minimal.factor_names == ["detection", "location", "flux"]


def test_continuous_factor_cdf_inverts_sampling() -> None:
    """The posterior CDF (the PIT of calibration checks) maps each factor's samples back to their uniforms."""
    generator = torch.Generator().manual_seed(3)
    continuous = [factor for factor in make_factors(list(EncoderConfig().factors)) if hasattr(factor, "cdf")]
    assert {"location", "flux", "disk_ellipticity"} <= {factor.name for factor in continuous}
    for factor in continuous:
        # Moderate posteriors, away from the clamps of the transforms (|e| < 0.99, values > 1e-4).
        params = 0.2 * torch.randn(6, 6, 6, factor.n_params, generator=generator)
        params[..., factor.dims :] -= 3.0  # log sigma (every continuous factor puts it after the means)
        uniform = 0.01 + 0.98 * torch.rand(6, 6, 6, factor.dims, generator=generator)
        cdf = factor.cdf(params, factor.sample(params, uniform))
        assert cdf.shape == uniform.shape, factor.name
        assert torch.allclose(cdf, uniform, atol=1e-3), factor.name


def test_checkerboard_groups_layout() -> None:
    two = checkerboard_groups(3, 4, 2)
    assert two.tolist() == [[0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]]
    four = checkerboard_groups(2, 2, 4)
    assert sorted(four.flatten().tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize("n_groups", [2, 4])
def test_checkerboard_never_looks_at_later_groups(n_groups: int) -> None:
    torch.manual_seed(0)
    encoder = BlissEncoder(
        EncoderConfig(
            pixel_channels=(8, 8, 16), tile_blocks=1, head_channels=16, checkerboard_groups=n_groups
        )
    )
    batch = simulated_batch(density=3000.0)
    inputs, truth = inputs_and_truth(encoder, batch)
    features = encoder.features(inputs)
    groups = checkerboard_groups(8, 8, n_groups)
    for group in range(n_groups):
        reference = encoder._group_params(features, encoder._context(truth.values, groups < group))
        perturbed_values = {k: v.clone() for k, v in truth.values.items()}
        later = (groups >= group)[None, :, :, None]
        for name, value in perturbed_values.items():
            perturbed_values[name] = torch.where(later, torch.rand_like(value) + 0.3, value)
        perturbed = encoder._group_params(features, encoder._context(perturbed_values, groups < group))
        for name in reference:
            assert torch.equal(reference[name], perturbed[name]), (group, name)
    # Earlier groups do matter (the conditioning is real).
    last = n_groups - 1
    base = encoder._group_params(features, encoder._context(truth.values, groups < last))
    flipped = dict(truth.values, detection=1.0 - truth.values["detection"])
    changed = encoder._group_params(features, encoder._context(flipped, groups < last))
    assert not torch.equal(base["detection"], changed["detection"])


def test_tiny_model_loss_decreases() -> None:
    torch.manual_seed(0)
    encoder = BlissEncoder(TINY)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=3e-3)
    batch = simulated_batch(seed=3, batch=8)
    inputs, truth = inputs_and_truth(encoder, batch)
    first, _ = encoder.loss(inputs, truth)
    for _ in range(30):
        loss, _ = encoder.loss(inputs, truth)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.7 * first.item()


def test_invalid_pixels_never_propagate_nan() -> None:
    torch.manual_seed(0)
    encoder = BlissEncoder(TINY)
    batch = simulated_batch()
    image, variance, mask = batch.image.clone(), batch.variance.clone(), batch.mask.clone()
    image[0, 3, :] = math.nan
    image[0, 5, 5] = math.inf
    variance[1, :, 7] = 0.0
    variance[1, 2, 2] = -4.0
    mask[2, 10:20, 10:20] |= 1 << MASK_PLANES["CR"]
    mask[3] |= 1 << MASK_PLANES["NO_DATA"]  # all masked
    inputs = prepare_inputs(image, variance, mask, 5.0)
    assert torch.isfinite(inputs.tensor).all()
    assert not inputs.valid[0, 3].any() and not inputs.valid[1, :, 7].any() and not inputs.valid[2, 15, 15]
    assert inputs.n_valid[3] == 0 and torch.isfinite(inputs.flux_scale_njy).all()
    # Invalid pixels look like the zero padding beyond the image: every channel, the PSF plane too.
    assert (inputs.tensor.permute(1, 0, 2, 3)[:, ~inputs.valid] == 0).all()
    assert (inputs.tensor[:, -1][inputs.valid] == 1.0).all()  # (5 px - 4 px reference) / 1 px
    posterior = encoder.posterior(inputs)
    for name, value in posterior.params.items():
        assert torch.isfinite(value).all(), name


def test_numpy_and_torch_normalizations_agree() -> None:
    """The CPU's numpy path and the torch path (other devices) give the same validity and the same
    values within float32 rounding, for every kind of invalid pixel and a 16-bit mask."""
    batch = simulated_batch(seed=3, batch=2)
    image, variance = batch.image.clone(), batch.variance.clone()
    mask = batch.mask.clone().to(torch.int16)
    image[0, 3, :] = math.nan
    image[0, 5, 5] = -math.inf
    variance[1, :, 7] = 0.0
    variance[1, 2, 2] = math.inf
    mask[1, 10:20, 10:20] |= 1 << MASK_PLANES["SAT"]
    bits = invalid_mask_bits(DEFAULT_INVALID_MASK_PLANES)
    numpy_signal, torch_signal = torch.empty_like(image), torch.empty_like(image)
    arrays = (image.numpy(), variance.numpy(), mask.long().numpy())
    on_numpy = (*_noise_units(np, *arrays, bits, numpy_signal.numpy()), numpy_signal.numpy())
    on_torch = (*_noise_units(torch, image, variance, mask.long(), bits, torch_signal), torch_signal)
    assert np.array_equal(on_numpy[0], on_torch[0].numpy())
    assert not on_numpy[0][0, 3].any() and not on_numpy[0][1, 2, 2] and not on_numpy[0][1, 15, 15]
    for from_numpy, from_torch in zip(on_numpy[1:], on_torch[1:], strict=True):
        np.testing.assert_allclose(from_numpy, from_torch.numpy(), rtol=1e-6, atol=1e-7)
    inputs = prepare_inputs(image, variance, mask, 4.0)
    assert torch.equal(inputs.valid, torch.from_numpy(on_numpy[0]))
    median = on_torch[1][0][on_torch[0][0]].median()
    assert float(inputs.flux_scale_njy[0]) == pytest.approx(float(median), rel=1e-6)
    # Neither path gives float32 asinh exactly as the other; both are within a few ulp of float64.
    exact = torch.asinh(torch.from_numpy(on_numpy[2]).double())
    np.testing.assert_allclose(inputs.tensor[:, 0].double(), exact, rtol=1e-6, atol=1e-7)
    # A dtype numpy lacks takes the torch path through the whole function.
    half = prepare_inputs(image.bfloat16(), variance.bfloat16(), mask, 4.0)
    assert torch.equal(half.valid, inputs.valid) and half.tensor.dtype == torch.bfloat16
    np.testing.assert_allclose(half.tensor.float(), inputs.tensor, rtol=0.02, atol=0.02)


def test_windows_normalized_with_the_whole_images_noise_scale_match_the_whole_image() -> None:
    """`infer_frame` normalizes a chunk at a time: `noise_scale` gives the validity and noise unit of the
    whole image, and each window normalized with that unit is the whole image's normalization there."""
    generator = torch.Generator().manual_seed(5)
    image = torch.randn(2, 40, 36, generator=generator) * 30.0
    variance = torch.rand(2, 40, 36, generator=generator) * 400.0 + 50.0
    mask = torch.zeros(2, 40, 36, dtype=torch.int32)
    image[0, 3, :] = math.nan
    variance[1, :, 7] = 0.0
    mask[1, 10:20, 10:20] |= 1 << MASK_PLANES["SAT"]
    fwhm = 3.0 + torch.rand(2, 40, 36, generator=generator)
    whole = prepare_inputs(image, variance, mask, fwhm)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        valid, scale = noise_scale(image.to(dtype), variance.to(dtype), mask)
        assert torch.equal(valid, whole.valid)
        expected = prepare_inputs(image.to(dtype), variance.to(dtype), mask, fwhm).flux_scale_njy
        assert torch.equal(scale, expected), dtype
    valid, scale = noise_scale(image, variance, mask)
    window = (..., slice(5, 23), slice(3, 31))
    part = prepare_inputs(image[window], variance[window], mask[window], fwhm[window], flux_scale_njy=scale)
    assert torch.equal(part.tensor, whole.tensor[window]) and torch.equal(part.flux_scale_njy, scale)
    # Without the whole image's unit, a window gets its own median noise.
    assert not torch.equal(
        prepare_inputs(image[window], variance[window], mask[window], 4.0).flux_scale_njy, scale
    )
    with pytest.raises(ValueError, match=r"flux_scale_njy has shape \(1,\); expected \(2,\)"):
        prepare_inputs(image, variance, mask, fwhm, flux_scale_njy=scale[:1])


def test_bad_shapes_and_sizes_are_clear_errors() -> None:
    encoder = BlissEncoder(TINY)
    image = torch.zeros(1, 30, 32)
    with pytest.raises(ValueError, match="image and variance shapes differ"):
        prepare_inputs(image, torch.ones(1, 30, 31), None, 4.0)
    with pytest.raises(ValueError, match="multiple of tile_size=4"):
        encoder.features(prepare_inputs(image, torch.ones(1, 30, 32), None, 4.0))
    with pytest.raises(ValueError, match="Unknown mask plane"):
        from lsst.meas.extensions.bliss import invalid_mask_bits

        invalid_mask_bits(["BAD", "COSMIC"])
    with pytest.raises(ValueError, match="checkerboard_groups"):
        EncoderConfig(checkerboard_groups=3)
    with pytest.raises(ValueError, match="power of two"):
        EncoderConfig(tile_size=6)


def test_posterior_sampling_is_seeded() -> None:
    torch.manual_seed(0)
    encoder = BlissEncoder(TINY)
    inputs, _ = inputs_and_truth(encoder, simulated_batch())
    first = encoder.posterior(inputs, randomness=TileRandomness(5))
    second = encoder.posterior(inputs, randomness=TileRandomness(5))
    for name in first.values:
        assert torch.equal(first.values[name], second.values[name])


def test_inference_pads_any_size_and_rejects_too_small_images() -> None:
    from lsst.meas.extensions.bliss import estimate_catalog

    torch.manual_seed(0)
    encoder = BlissEncoder(TINY)
    batch = simulated_batch()
    image, variance = batch.image[:, :29, :31], batch.variance[:, :29, :31]
    catalog = estimate_catalog(encoder, image, variance, None, 4.0, 0.2, detection_threshold=0.0)
    valid = catalog.is_valid
    assert (catalog.x[valid] < 30.5).all() and (catalog.y[valid] < 28.5).all()
    with pytest.raises(ValueError, match="at least one tile"):
        estimate_catalog(encoder, image[:, :3, :3], variance[:, :3, :3], None, 4.0, 0.2)
    with pytest.raises(ValueError, match="shapes differ"):
        estimate_catalog(encoder, image, variance[:, :, :30], None, 4.0, 0.2)


def test_tensor_hash_equals_the_python_integer_hash() -> None:
    """The int32 tensor hash (wrapping products, masked shifts) gives the bits of the exact integer one."""
    values = [0, 1, 2**31 - 1, 2**31, 2**32 - 1] + torch.randint(0, 2**32, (2000,)).tolist()
    as_tensor = torch.tensor([_as_int32(value) for value in values], dtype=torch.int32)
    hashed = (_mix32_tensor(as_tensor).long() & 0xFFFFFFFF).tolist()
    assert hashed == [_mix32(value) for value in values]


def test_tile_randomness_is_uniform_keyed_by_global_tile_and_seeded() -> None:
    whole = TileRandomness(7, sample_index=2).uniform(3, (2, 40, 50), 2, torch.device("cpu"), torch.float64)
    assert whole.shape == (2, 40, 50, 2)
    assert ((whole > 0) & (whole < 1)).all()
    # Uniform: mean 1/2, variance 1/12, no correlation between neighbouring tiles or components.
    assert abs(float(whole.mean()) - 0.5) < 0.01 and abs(float(whole.var()) - 1 / 12) < 0.005
    assert (
        abs(
            float(
                torch.corrcoef(torch.stack([whole[:, 1:, :, 0].flatten(), whole[:, :-1, :, 0].flatten()]))[
                    0, 1
                ]
            )
        )
        < 0.05
    )
    assert (
        abs(float(torch.corrcoef(torch.stack([whole[..., 0].flatten(), whole[..., 1].flatten()]))[0, 1]))
        < 0.05
    )
    # A chunk starting at tile (10, 20) gets exactly the numbers of those tiles in the whole grid.
    chunk = TileRandomness(7, 2, tile_origin=(10, 20)).uniform(
        3, (2, 12, 9), 2, torch.device("cpu"), torch.float64
    )
    assert torch.equal(chunk, whole[:, 10:22, 20:29])
    for other in (TileRandomness(8, 2), TileRandomness(7, 3)):
        assert not torch.equal(other.uniform(3, (2, 40, 50), 2, torch.device("cpu"), torch.float64), whole)
    assert not torch.equal(
        TileRandomness(7, 2).uniform(4, (2, 40, 50), 2, torch.device("cpu"), torch.float64), whole
    )


@pytest.mark.parametrize("present_fraction", [0.7, 0.05])
def test_sparse_four_group_posterior_equals_the_dense_group_loop(present_fraction: float) -> None:
    """The sparse four-group pass decides every tile as the dense loop does (odd tile counts too)."""
    torch.manual_seed(0)
    encoder = BlissEncoder(
        EncoderConfig(pixel_channels=(8, 8, 16), tile_blocks=1, head_channels=16, checkerboard_groups=4)
    ).eval()
    for module in encoder.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, std=(1.0 / (module.in_channels * 9)) ** 0.5)
    image = torch.randn(2, 36, 44) * 3
    inputs = prepare_inputs(image, torch.ones_like(image), None, 4.0)
    # Crowded (most tiles recomputed) or sparse: shift the detection logits to the wanted fraction.
    logits = encoder.encode(inputs).absent.params["detection"]
    with torch.no_grad():
        encoder.head[-1].bias[0] -= torch.quantile(logits.flatten(), 1.0 - present_fraction)
    encoded = encoder.encode(inputs)
    for randomness in (None, TileRandomness(3, sample_index=1, tile_origin=(2, 4))):
        fast = encoder.posterior(inputs, randomness=randomness, encoded=encoded)
        dense = encoder._posterior_dense(encoded, randomness, inputs.flux_scale_njy)
        present = dense.values["detection"][..., 0] > 0.5
        # A sample's values of empty tiles are never used (not in catalogs, zero in the context); the
        # modes of every tile are (catalogs with a detection threshold below 0.5).
        compared = present if randomness is not None else torch.ones_like(present)
        for name in fast.params:
            torch.testing.assert_close(fast.params[name], dense.params[name], msg=name)
            torch.testing.assert_close(fast.values[name][compared], dense.values[name][compared], msg=name)
        assert torch.equal(fast.values["detection"], dense.values["detection"])
        assert 0 < int(present.sum()) < present.numel()
        # An encoding that kept only the absent trajectory gives the same sparse pass, and no dense one.
        lean = encoder.encode(inputs, keep_dense=False)
        assert lean.features is None and lean.crop(slice(0, 4), slice(0, 4)).projected is None
        from_lean = encoder.posterior(inputs, randomness=randomness, encoded=lean)
        for name in fast.params:
            assert torch.equal(from_lean.params[name], fast.params[name])
            assert torch.equal(from_lean.values[name], fast.values[name])
        with pytest.raises(ValueError, match="keep_dense=True"):
            encoder.posterior(inputs, randomness=randomness, encoded=lean, checkerboard=False)
    with torch.no_grad():  # inference writes the first hidden layer straight into its bordered copy
        lean, full = encoder.encode(inputs, keep_dense=False).absent, encoder.encode(inputs).absent
    for group, hidden in enumerate(full.hidden):
        assert torch.equal(lean.hidden[group], hidden)
    for name, value in full.params.items():
        assert torch.equal(lean.params[name], value)
    # Two samples drawn together as a sparse list of sources: the dense loop's present tiles, in
    # the order of the colour groups, with their parameters and values.
    randomness = TileRandomness(3, tile_origin=(2, 4), sample_indices=(1, 5))
    first = prepare_inputs(image[:1], torch.ones_like(image[:1]), None, 4.0)
    sources = sample_sources(encoder, encoder.encode(first).absent.repeat(2), randomness)
    with torch.no_grad():  # inference gathers the changed rows in place: the same sources
        trajectory = encoder.encode(first, keep_dense=False).absent
        without_grad = sample_sources(encoder, trajectory.repeat(2), randomness)
    assert torch.equal(without_grad.rows, sources.rows) and torch.equal(without_grad.cols, sources.cols)
    for name in sources.params:
        torch.testing.assert_close(without_grad.params[name], sources.params[name], msg=name)
    twice = prepare_inputs(image[:1].expand(2, -1, -1), torch.ones_like(image), None, 4.0)
    dense = encoder._posterior_dense(encoder.encode(twice), randomness, twice.flux_scale_njy)
    present = dense.values["detection"][..., 0] > 0.5
    order = torch.argsort((sources.images * 1000 + sources.rows) * 1000 + sources.cols)
    images, rows, cols = torch.nonzero(present, as_tuple=True)
    assert torch.equal(sources.images[order], images)
    assert torch.equal(sources.rows[order], rows)
    assert torch.equal(sources.cols[order], cols)
    for name in sources.params:
        torch.testing.assert_close(sources.params[name][order], dense.params[name][present], msg=name)
        torch.testing.assert_close(sources.values[name][order], dense.values[name][present], msg=name)


@pytest.mark.parametrize(
    ("stem", "downsample_kernel", "centre_offset"),
    [
        ("convolution", 4, 0.0),
        ("convolution", 3, -1.5),
        ("space_to_depth", 4, 0.0),
        ("space_to_depth", 3, -1.0),
    ],
)
def test_tile_features_are_centred_on_their_tile(
    stem: str, downsample_kernel: int, centre_offset: float
) -> None:
    # The pixels that influence tile (16, 16)'s features: with 4-pixel stride-2 kernels they are
    # centred on the tile; the older 3-pixel layout leans 1.5 px towards the tile's low corner (1 px
    # with the space-to-depth stem, whose 2x2 blocks are aligned with the tiles).
    channels = (16, 32, 64) if stem == "convolution" else (32, 64)
    config = EncoderConfig(downsample_kernel=downsample_kernel, stem=stem, pixel_channels=channels)
    encoder = BlissEncoder(config).eval()
    tile, index = config.tile_size, 16
    pixels = torch.randn(1, N_INPUT_CHANNELS, 128, 128, generator=torch.Generator().manual_seed(0))
    pixels.requires_grad_(True)
    encoder.backbone(pixels)[0, :, index, index].sum().backward()
    assert pixels.grad is not None
    influence = pixels.grad.abs().sum(dim=(0, 1)) > 0
    rows = torch.nonzero(influence.any(dim=1)).flatten().float()
    cols = torch.nonzero(influence.any(dim=0)).flatten().float()
    tile_centre = index * tile + (tile - 1) / 2
    for extent in (rows, cols):
        assert (extent.min() + extent.max()) / 2 == pytest.approx(tile_centre + centre_offset)
        reach_beyond_tile = max(index * tile - extent.min(), extent.max() - (index * tile + tile - 1))
        assert reach_beyond_tile <= config.context_pixels


def test_models_written_before_downsample_kernel_load_with_the_old_layout() -> None:
    document = EncoderConfig(downsample_kernel=4).to_dict()
    assert document["downsample_kernel"] == 4
    del document["downsample_kernel"]
    assert EncoderConfig.from_dict(document).downsample_kernel == 3
    with pytest.raises(ValueError, match="downsample_kernel=5 must be 3 or 4"):
        EncoderConfig(downsample_kernel=5)


def test_stem_is_validated_and_older_models_load_with_the_convolution_stem() -> None:
    document = EncoderConfig(stem="space_to_depth", pixel_channels=(16, 32)).to_dict()
    assert document["stem"] == "space_to_depth"
    del document["stem"], document["pixel_channels"]
    assert EncoderConfig.from_dict(document).stem == "convolution"
    with pytest.raises(ValueError, match="stem='pixels' must be one of 'convolution', 'space_to_depth'"):
        EncoderConfig(stem="pixels")
    # The space-to-depth stem starts at half resolution: one width fewer.
    with pytest.raises(ValueError, match=r"must list 2 positive widths \(half resolution"):
        EncoderConfig(stem="space_to_depth")
    with pytest.raises(ValueError, match="needs tile_size >= 2"):
        EncoderConfig(stem="space_to_depth", tile_size=1, pixel_channels=())


@pytest.mark.parametrize(
    "config",
    [
        EncoderConfig(pixel_channels=(8, 8, 16), tile_blocks=2, head_channels=16),
        EncoderConfig(stem="space_to_depth", pixel_channels=(8, 16), tile_blocks=2, head_channels=16),
    ],
)
def test_inference_backbone_overwrites_and_folds_without_changing_the_features(config: EncoderConfig) -> None:
    """Without autograd the backbone overwrites its activations and runs the space-to-depth stem as one
    strided convolution: the features agree with the training path's within float32 rounding."""
    torch.manual_seed(2)
    encoder = BlissEncoder(config).eval()
    for module in encoder.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, std=(1.0 / (module.in_channels * 9)) ** 0.5)
    image = torch.randn(1, 48, 40) * 3
    inputs = prepare_inputs(image, torch.ones_like(image), None, 4.0)
    before = inputs.tensor.clone()
    with torch.enable_grad():
        reference = encoder.features(inputs)
    with torch.no_grad():
        torch.testing.assert_close(encoder.features(inputs), reference, rtol=1e-5, atol=1e-6)
        for layout in (torch.contiguous_format, torch.channels_last):
            features = encoder._backbone(inputs.tensor.contiguous(memory_format=layout))
            torch.testing.assert_close(features, reference, rtol=1e-5, atol=1e-6)
    assert torch.equal(inputs.tensor, before)  # the input is never overwritten
