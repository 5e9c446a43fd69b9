"""The SEP baseline: positions and fluxes of isolated stars, bad pixels, noise-only images."""

import numpy as np
import pytest
import torch

from lsst.meas.extensions.bliss import (
    FullCatalog,
    ImageSimulator,
    PriorConfig,
    SimulatorConfig,
    SurveyConditions,
    mag_to_flux_njy,
)
from lsst.meas.extensions.bliss.baselines import SepCatalog, run_sep, run_sep_batch
from lsst.meas.extensions.bliss.metrics import match_sources

pytest.importorskip("sep")

CONDITIONS = SurveyConditions.from_survey()
SIZE = 64


def make_simulator(density: float = 200.0) -> ImageSimulator:
    return ImageSimulator(
        CONDITIONS,
        PriorConfig(source_density_per_arcmin2=density),
        SimulatorConfig(image_height=SIZE, image_width=SIZE),
        device="cpu",
    )


@pytest.fixture(scope="module")
def simulated() -> tuple[ImageSimulator, object, list[SepCatalog]]:
    simulator = make_simulator()
    batch = simulator.sample(128, seed=2)
    return simulator, batch, run_sep_batch(batch.image, batch.variance, batch.mask)


def isolated_bright_stars(simulator: ImageSimulator, batch: object) -> list[tuple[int, int]]:
    """``(image, source)`` of stars brighter than 22.5 mag, >= 10 px from the edges, whose
    neighbours (border sources included) add < 1% of their flux within 10 px."""
    truth = batch.truth
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    found = []
    for b in range(truth.batch_size):
        for i in range(int(truth.n_sources[b])):
            x, y = truth.x[b, i].item(), truth.y[b, i].item()
            flux = truth.fields["flux_njy"][b, i].item()
            if truth.fields["is_galaxy"][b, i] or flux < mag_to_flux_njy(22.5):
                continue
            if min(x, y, SIZE - 1 - x, SIZE - 1 - y) < 10:
                continue
            alone = FullCatalog(
                SIZE,
                SIZE,
                torch.ones(1, dtype=torch.long),
                truth.x[b : b + 1, i : i + 1],
                truth.y[b : b + 1, i : i + 1],
                {name: value[b : b + 1, i : i + 1] for name, value in truth.fields.items()},
            )
            own = simulator.render(alone, CONDITIONS.psf())[0]
            near = torch.as_tensor((cols - x) ** 2 + (rows - y) ** 2 < 10**2)
            if (batch.noiseless[b] - own).abs()[near].sum().item() < 0.01 * flux:
                found.append((b, i))
    return found


def test_sep_convention_is_lsst_pixel_centres() -> None:
    rows, cols = np.mgrid[0:41, 0:41].astype(np.float64)
    star = 1e4 * np.exp(-((cols - 20.3) ** 2 + (rows - 15.0) ** 2) / (2 * 2.0**2))
    catalog = run_sep(star, np.ones_like(star))
    assert len(catalog) == 1
    assert catalog.x[0] == pytest.approx(20.3, abs=1e-3) and catalog.y[0] == pytest.approx(15.0, abs=1e-3)
    assert catalog.x_isophotal[0] == pytest.approx(20.3, abs=1e-3)


def test_sep_recovers_bright_isolated_stars(simulated) -> None:
    simulator, batch, catalogs = simulated
    stars = isolated_bright_stars(simulator, batch)
    assert len(stars) >= 4
    truth = batch.truth
    residuals = []
    for b, i in stars:
        catalog = catalogs[b]
        match = match_sources(truth.x[b, i : i + 1], truth.y[b, i : i + 1], catalog.x, catalog.y, 1.0)
        assert match.n_matched == 1
        assert match.distance[0] < 0.3
        j = match.est_index[0]
        residual = catalog.flux_njy[j] / truth.fields["flux_njy"][b, i].item() - 1.0
        # A Kron aperture misses 2-4% of a star's light (the Moffat wings); allow 3 sigma of noise.
        noise = 1.0 / catalog.snr[j]
        assert -0.05 - 3 * noise < residual < 0.02 + 3 * noise
        residuals.append(residual)
    assert abs(np.median(residuals)) < 0.05


def test_outputs_are_finite_and_well_formed(simulated) -> None:
    _, batch, catalogs = simulated
    assert len(catalogs) == batch.image.shape[0]
    for catalog in catalogs:
        for name in ("x", "y", "flux_njy", "flux_err_njy", "snr", "a", "b", "theta", "kron_radius"):
            assert np.isfinite(getattr(catalog, name)).all(), name
        assert np.all(catalog.flux_err_njy > 0)
        np.testing.assert_allclose(catalog.snr, catalog.flux_njy / catalog.flux_err_njy)


def test_bad_and_masked_pixels_do_not_propagate(simulated) -> None:
    _, batch, catalogs = simulated
    b = int(np.argmax([len(c) for c in catalogs]))
    image, variance = batch.image[b].double().numpy().copy(), batch.variance[b].double().numpy().copy()
    reference = catalogs[b]
    # A bright detection's core is made unusable in three ways at once.
    target = int(np.argmax(reference.flux_njy))
    row, col = int(round(reference.y[target])), int(round(reference.x[target]))
    window = (slice(max(row - 2, 0), row + 3), slice(max(col - 2, 0), col + 3))
    image[window] = np.nan
    variance[max(row - 3, 0), col] = 0.0
    variance[row, max(col - 3, 0)] = -1.0
    image[row, max(col - 4, 0)] = np.inf
    mask = np.zeros(image.shape, dtype=np.int32)
    mask[row, min(col + 3, SIZE - 1)] = 2
    catalog = run_sep(image, variance, mask)
    for name in ("x", "y", "flux_njy", "flux_err_njy", "snr"):
        assert np.isfinite(getattr(catalog, name)).all(), name
    # Detections whose Kron apertures stay clear of the damage are unchanged.
    aperture_radius = np.maximum(2.5 * reference.kron_radius, 3.5) * reference.a
    far = np.hypot(reference.x - col, reference.y - row) > aperture_radius + 10
    assert far.sum() >= 3
    match = match_sources(reference.x[far], reference.y[far], catalog.x, catalog.y, 0.01)
    assert match.n_matched == far.sum()
    np.testing.assert_allclose(
        catalog.flux_njy[match.est_index], reference.flux_njy[far][match.true_index], rtol=1e-6
    )

    # A fully masked star is not detected at all.
    hidden = np.zeros(image.shape, dtype=bool)
    hidden[max(row - 8, 0) : row + 9, max(col - 8, 0) : col + 9] = True
    masked = run_sep(batch.image[b], batch.variance[b], torch.as_tensor(hidden))
    assert match_sources([col], [row], masked.x, masked.y, 2.0).n_matched == 0


def test_noise_only_images_give_few_detections() -> None:
    batch = make_simulator(density=1e-6).sample(8, seed=0)
    catalogs = run_sep_batch(batch.image, batch.variance)
    assert sum(len(c) for c in catalogs) <= 2
    for catalog in catalogs:
        assert isinstance(catalog, SepCatalog) and catalog.x.dtype == np.float64


def test_shape_and_parameter_errors() -> None:
    image = np.zeros((16, 16))
    with pytest.raises(ValueError, match="variance has shape"):
        run_sep(image, np.ones((16, 15)))
    with pytest.raises(ValueError, match="mask has shape"):
        run_sep(image, np.ones((16, 16)), np.zeros((15, 16)))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        run_sep(np.zeros(16), np.ones(16))
    with pytest.raises(ValueError, match="No usable pixel"):
        run_sep(image, np.zeros((16, 16)))
    with pytest.raises(ValueError, match="thresh"):
        run_sep(image, np.ones((16, 16)), thresh=0.0)
    with pytest.raises(ValueError, match="variances have shape"):
        run_sep_batch(np.zeros((2, 16, 16)), np.ones((2, 16, 15)))
    with pytest.raises(ValueError, match="masks have shape"):
        run_sep_batch(np.zeros((2, 16, 16)), np.ones((2, 16, 16)), np.zeros((1, 16, 16)))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        run_sep_batch(np.zeros((16, 16)), np.ones((16, 16)))
    assert len(run_sep(image, np.ones((16, 16)))) == 0


def test_sources_along_a_column_do_not_break_the_apertures() -> None:
    """A streak confined to one column (between masked columns) has theta = pi/2,
    which SEP's float32 output rounds above pi/2; its aperture photometry must accept it."""
    rng = np.random.default_rng(3)
    image = rng.normal(0.0, 1.0, (64, 64))
    image[10:30, 20] += 50.0
    image[40, 40] += 500.0
    mask = np.zeros(image.shape, dtype=bool)
    mask[:, 19] = mask[:, 21] = True  # the streak's pixels then lie in one column: theta is exactly pi/2
    catalog = run_sep(image, np.ones_like(image), mask)
    assert len(catalog) >= 2 and np.isfinite(catalog.flux_njy).all()
