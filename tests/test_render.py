"""The torch renderer against GalSim, flux conservation, positions and image assembly."""

import math

import galsim
import numpy as np
import pytest
import torch

from lsst.meas.extensions.bliss import (
    GaussianPsf,
    ImagePsf,
    MoffatPsf,
    RenderSources,
    render_images,
    render_stamps,
    stamp_half_size,
)
from lsst.meas.extensions.bliss.bench._render_suite import accuracy_grid, compare_with_galsim, knot_grid
from lsst.meas.extensions.bliss.rendering import (
    EXPONENTIAL_HLR_OVER_SCALE,
    knot_fluxes,
    knot_offsets_pix,
    render_galsim_images,
)

PEAK_TOLERANCE = 0.01
FLUX_TOLERANCE = 0.005


def make_sources(n: int, **values: float | list[float]) -> RenderSources:
    defaults = {
        "x": 20.0,
        "y": 20.0,
        "flux": 1000.0,
        "is_galaxy": False,
        "disk_frac": 1.0,
        "disk_hlr_pix": 2.0,
        "disk_q": 1.0,
        "bulge_hlr_pix": 1.0,
        "bulge_q": 1.0,
        "position_angle_rad": 0.0,
        "image_index": 0,
        "psf_index": 0,
    }
    defaults.update(values)

    def column(name: str) -> torch.Tensor:
        value = torch.as_tensor(defaults[name]).expand(n).clone()
        if name == "is_galaxy":
            return value.bool()
        if name in ("image_index", "psf_index"):
            return value.long()
        return value.double()

    return RenderSources(**{name: column(name) for name in defaults})


def test_sample_of_accuracy_grid_matches_galsim() -> None:
    # The benchmark covers the whole grid; this is a random sample of it plus all the stars.
    for psf, sources in accuracy_grid(sample=30, seed=7):
        errors = compare_with_galsim(psf, sources)
        worst = int(np.argmax(errors["max_abs_err_over_peak"]))
        assert errors["max_abs_err_over_peak"].max() <= PEAK_TOLERANCE, (type(psf).__name__, worst)
        assert errors["flux_rel_err"].max() <= FLUX_TOLERANCE


def test_extreme_galaxy_matches_galsim() -> None:
    # The largest, flattest, bulge-dominated corner of the grid under the narrowest PSF.
    sources = make_sources(
        1,
        x=50.3,
        y=49.6,
        is_galaxy=True,
        disk_frac=0.25,
        disk_hlr_pix=15.0,
        disk_q=0.2,
        bulge_hlr_pix=15.0,
        bulge_q=0.2,
        position_angle_rad=0.7,
    )
    errors = compare_with_galsim(MoffatPsf(3.0), sources)
    assert errors["max_abs_err_over_peak"][0] <= PEAK_TOLERANCE
    assert errors["flux_rel_err"][0] <= FLUX_TOLERANCE


def test_pixelized_psf_matches_analytic_psf() -> None:
    # An LSST-style kernel image (pixel-convolved PSF) must give what the analytic PSF gives.
    fwhm_pix = 4.0
    kernel = galsim.Moffat(beta=3.5, fwhm=fwhm_pix).drawImage(nx=61, ny=61, scale=1.0).array
    sources = make_sources(
        2,
        x=[20.3, 20.0],
        y=[19.8, 20.0],
        is_galaxy=[False, True],
        disk_frac=0.6,
        disk_hlr_pix=3.0,
        disk_q=0.5,
        bulge_hlr_pix=1.5,
        bulge_q=0.8,
    )
    analytic = render_stamps(sources, MoffatPsf(fwhm_pix, beta=3.5), 30, dtype=torch.float64)
    pixelized = render_stamps(sources, ImagePsf(kernel * 3.7), 30, dtype=torch.float64)
    peak = analytic.amax(dim=(-2, -1))
    assert ((pixelized - analytic).abs().amax(dim=(-2, -1)) / peak).max() < 2e-3


def test_centroid_and_flux_of_shifted_star() -> None:
    sources = make_sources(1, x=20.3, y=19.75)
    stamp = render_stamps(sources, GaussianPsf(3.0), 16, dtype=torch.float64)[0]
    offsets = torch.arange(-16, 17, dtype=torch.float64)
    total = stamp.sum()
    assert float(total) == pytest.approx(1000.0, rel=1e-4)
    assert float((stamp.sum(dim=0) * offsets).sum() / total) == pytest.approx(0.3, abs=1e-3)
    assert float((stamp.sum(dim=1) * offsets).sum() / total) == pytest.approx(-0.25, abs=1e-3)


def test_render_images_places_and_clips_sources() -> None:
    sources = make_sources(
        4,
        x=[10.0, 40.2, 0.0, 500.0],
        y=[12.0, 30.7, 25.0, 500.0],
        flux=[100.0, 200.0, 300.0, 400.0],
        is_galaxy=[False, True, False, False],
        image_index=[0, 1, 1, 0],
    )
    images = render_images(sources, GaussianPsf(3.0), 2, 48, 64, dtype=torch.float64)
    assert images.shape == (2, 48, 64)
    assert float(images[0].sum()) == pytest.approx(100.0, rel=1e-3)  # the far-away source adds nothing
    # Image 1: the galaxy is whole; of the star at x=0 only the light at x >= -0.5 (the
    # outer edge of pixel 0) is kept, a fraction Phi(0.5 / sigma) of it.
    sigma = 3.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    kept = 0.5 * (1.0 + math.erf(0.5 / sigma / math.sqrt(2.0)))
    assert float(images[1].sum()) == pytest.approx(200.0 + 300.0 * kept, rel=1e-3)
    row, col = divmod(int(images[0].argmax()), 64)
    assert (row, col) == (12, 10)


def test_stamp_size_grows_with_galaxy_size_and_psf() -> None:
    small = make_sources(1, is_galaxy=True, disk_hlr_pix=0.5)
    large = make_sources(1, is_galaxy=True, disk_hlr_pix=10.0, disk_q=0.3)
    psf = MoffatPsf(4.0)
    assert int(stamp_half_size(small, psf)) < int(stamp_half_size(large, psf))
    assert int(stamp_half_size(small, GaussianPsf(3.0))) < int(stamp_half_size(small, GaussianPsf(8.0)))


def test_float32_agrees_with_float64() -> None:
    sources = make_sources(3, x=[20.1, 20.4, 19.6], is_galaxy=[True, True, False], disk_frac=[0.0, 0.5, 1.0])
    psf = MoffatPsf(4.0)
    single = render_stamps(sources, psf, 20, dtype=torch.float32).double()
    double = render_stamps(sources, psf, 20, dtype=torch.float64)
    assert ((single - double).abs().max() / double.max()) < 1e-5


@pytest.mark.parametrize(
    ("make_psf", "message"),
    [
        (lambda: ImagePsf(np.ones((10, 10))), "odd"),
        (lambda: ImagePsf(np.ones((9, 11))), "odd"),
        (lambda: ImagePsf(np.full((9, 9), np.nan)), "NaN"),
        (lambda: ImagePsf(np.zeros((9, 9))), "positive sum"),
        (lambda: GaussianPsf(0.0), "psf_fwhm_pix"),
        (lambda: MoffatPsf([3.0, -1.0]), "psf_fwhm_pix"),
        (lambda: MoffatPsf(3.0, beta=1.0), "moffat_beta"),
    ],
)
def test_invalid_psfs_are_clear_errors(make_psf, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_psf()


def test_image_psf_is_normalized() -> None:
    kernel = np.zeros((5, 5))
    kernel[2, 2] = 4.0
    kernel[2, 3] = 1.0
    psf = ImagePsf(kernel)
    assert float(psf.images.sum()) == pytest.approx(1.0)


def test_galaxies_with_knots_match_galsim() -> None:
    # Centred and off-centre knots, radii up to 5", both PSF models; GalSim draws the knots as points.
    for psf, sources in knot_grid(sample=8, seed=5):
        assert bool(sources.has_knots.all())
        errors = compare_with_galsim(psf, sources)
        assert errors["max_abs_err_over_peak"].max() <= PEAK_TOLERANCE
        assert errors["flux_rel_err"].max() <= FLUX_TOLERANCE


def test_knots_are_placed_like_the_sheared_disk_and_fixed_by_their_seed() -> None:
    hlr, q, angle = 4.0, 0.5, 0.6
    offsets = knot_offsets_pix(
        torch.tensor([7.0]),
        20_000,
        torch.tensor([hlr]),
        torch.tensor([q]),
        torch.tensor([angle]),
        torch.tensor([0.0]),
    )[0].numpy()
    # Undo the rotation and the area-preserving shear: the round profile's radii.
    cos, sin = math.cos(angle), math.sin(angle)
    major = offsets[:, 0] * cos + offsets[:, 1] * sin
    minor = -offsets[:, 0] * sin + offsets[:, 1] * cos
    radius = np.hypot(major * math.sqrt(q), minor / math.sqrt(q))
    # Half an exponential disk's light lies within its half-light radius; none beyond 5 of them.
    assert np.median(radius) == pytest.approx(hlr, rel=0.03)
    assert radius.max() <= 5 * hlr
    assert np.mean(radius) == pytest.approx(2 * hlr / EXPONENTIAL_HLR_OVER_SCALE, rel=0.03)
    assert np.std(minor) / np.std(major) == pytest.approx(q, rel=0.03)
    # A knot does not depend on how many are drawn; another seed moves it.
    first_ten = knot_offsets_pix(
        torch.tensor([7.0]),
        10,
        torch.tensor([hlr]),
        torch.tensor([q]),
        torch.tensor([angle]),
        torch.tensor([0.0]),
    )[0].numpy()
    np.testing.assert_allclose(first_ten, offsets[:10])
    other = knot_offsets_pix(
        torch.tensor([8.0]),
        10,
        torch.tensor([hlr]),
        torch.tensor([q]),
        torch.tensor([angle]),
        torch.tensor([0.0]),
    )[0].numpy()
    assert np.abs(other - first_ten).min() > 0


def test_off_centre_knots_move_their_centre_by_the_offset() -> None:
    hlr, offset_hlr = 3.0, 1.0
    offsets = knot_offsets_pix(
        torch.tensor([3.0]),
        20_000,
        torch.tensor([hlr]),
        torch.tensor([1.0]),
        torch.tensor([0.0]),
        torch.tensor([offset_hlr]),
    )[0].numpy()
    assert np.hypot(*offsets.mean(axis=0)) == pytest.approx(offset_hlr * hlr, rel=0.05)


def test_knots_share_their_fraction_of_the_disk_flux() -> None:
    fluxes = knot_fluxes(
        torch.tensor([1000.0, 500.0]),
        torch.tensor([0.8, 1.0]),
        torch.tensor([0.25, 0.5]),
        torch.tensor([4.0, 2.0]),
        5,
    )
    np.testing.assert_allclose(fluxes.sum(1).numpy(), [200.0, 250.0])
    assert torch.equal(fluxes[1, 2:], torch.zeros(3))


def test_partial_knot_fields_are_an_error() -> None:
    with pytest.raises(ValueError, match="knot_frac"):
        RenderSources(**{**vars(make_sources(1)), "knot_frac": torch.zeros(1)})


def test_galsim_scene_matches_the_torch_renderer() -> None:
    sources = make_sources(
        3,
        x=[10.2, 30.0, 61.5],
        y=[20.0, 33.4, 40.0],
        is_galaxy=True,
        disk_hlr_pix=[2.0, 6.0, 3.0],
        disk_q=0.6,
        position_angle_rad=0.4,
        disk_frac=0.8,
        knot_frac=[0.0, 0.4, 0.3],
        knot_count=[0.0, 12.0, 6.0],
        knot_seed=[0.0, 17.0, 99.0],
        knot_offset_hlr=[0.0, 0.5, 0.0],
    )
    psf = MoffatPsf(np.array([3.5]), beta=3.5)
    ours = render_images(sources, psf, 1, 48, 64, dtype=torch.float64)[0].numpy()
    reference = render_galsim_images(sources, psf, 1, 48, 64)[0]
    # GalSim's default accuracy (folding threshold 5e-3) bounds the agreement of the scenes.
    assert np.abs(ours - reference).max() <= PEAK_TOLERANCE * reference.max()


@pytest.mark.parametrize(
    "psf",
    [
        GaussianPsf([2.5, 3.0, 4.0]),
        MoffatPsf([2.5, 3.0, 4.0]),
        ImagePsf(
            np.stack(
                [
                    galsim.Moffat(beta=3.5, fwhm=f).drawImage(nx=15, ny=15, scale=1.0).array
                    for f in (2.5, 3.0, 4.0)
                ]
            )
        ),
    ],
    ids=["gaussian", "moffat", "image"],
)
def test_centred_transforms_of_some_psfs_match_those_of_the_whole_batch(psf) -> None:
    # A stamp size that holds the sources of a few images computes only their PSFs' transforms.
    index = torch.tensor([2, 0])
    some = psf.centred_fourier_grid_of(index, 32)
    whole = psf.centred_fourier_grid(32)
    assert some.shape == (2, 17, 32)
    torch.testing.assert_close(some, whole[index], rtol=0, atol=1e-7)
