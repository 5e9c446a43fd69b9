"""The demo Butler repo of simulated calexps: records, calexp round trip, PSF field, truth tables, errors."""

import dataclasses

import astropy.units as u
import numpy as np
import pytest
from astropy.table import QTable
from lsst.daf.butler import Butler, DatasetType

from lsst.meas.extensions.bliss.bench._tables_suite import _variance_njy2
from lsst.meas.extensions.bliss.cli import make_demo_repo_main
from lsst.meas.extensions.bliss.inference import psf_kernel_fwhm_pix
from lsst.meas.extensions.bliss.pipeline.demo import (
    DEMO_MASK_PLANES,
    DemoRepoConfig,
    LinearPsfField,
    build_demo_repo,
    make_visit_image,
)
from lsst.meas.extensions.bliss.rendering import KNOT_FIELDS
from lsst.meas.extensions.bliss.survey import flux_njy_to_mag

HEIGHT, WIDTH = 128, 160
DIMENSIONS = {"instrument", "visit", "detector"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, default_model) -> dict:
    """One visit x two 128 x 160 detectors."""
    root = tmp_path_factory.mktemp("demo") / "repo"
    config = DemoRepoConfig(n_visits=1, n_detectors=2, height=HEIGHT, width=WIDTH, seed=7)
    summary = build_demo_repo(root, config, model=default_model)
    summary["config"] = config
    return summary


@pytest.fixture(scope="module")
def butler(demo: dict):
    butler = Butler.from_config(demo["root"], collections=demo["calexp_collection"])
    yield butler
    butler.close()


def kernel_fwhm_arcsec(psf, x: float, y: float, conditions) -> float:
    """FWHM of the PSF family with the effective area of the PSF's kernel at (x, y)."""
    kernel = np.asarray(psf.compute_kernel_image(x=float(x), y=float(y)).array)
    return psf_kernel_fwhm_pix(kernel, conditions) * conditions.pixel_scale_arcsec


def pixel_scale_arcsec(sky_projection, x: float, y: float) -> tuple[float, float]:
    """Angular size of one pixel step along x and along y at (x, y)."""
    sky = sky_projection.pixel_to_sky(x=np.array([x, x + 1.0, x]), y=np.array([y, y, y + 1.0]))
    return sky[0].separation(sky[1]).to_value(u.arcsec), sky[0].separation(sky[2]).to_value(u.arcsec)


def test_summary_and_dimension_records(demo: dict, butler: Butler, default_model) -> None:
    config = demo["config"]
    assert len(demo["data_ids"]) == 2 and len(demo["n_truth"]) == 2
    assert all(n > 0 for n in demo["n_truth"])
    records = {
        element: list(butler.registry.queryDimensionRecords(element))
        for element in (
            "instrument",
            "physical_filter",
            "detector",
            "day_obs",
            "visit",
            "visit_detector_region",
        )
    }
    assert [r.name for r in records["instrument"]] == [config.instrument]
    (physical_filter,) = records["physical_filter"]
    assert (physical_filter.name, physical_filter.band) == (
        config.physical_filter,
        default_model.conditions.band,
    )
    assert sorted(r.id for r in records["detector"]) == [d["detector"] for d in demo["data_ids"]]
    assert len(records["day_obs"]) == 1
    (visit,) = records["visit"]
    assert visit.physical_filter == config.physical_filter
    assert visit.day_obs == records["day_obs"][0].id
    # pipetask's graph builder needs the visit-detector join rows.
    assert sorted((r.visit, r.detector) for r in records["visit_detector_region"]) == sorted(
        (d["visit"], d["detector"]) for d in demo["data_ids"]
    )
    for name, storage_class in (("calexp", "VisitImage"), ("bliss_truth", "ArrowAstropy")):
        dataset_type = butler.get_dataset_type(name)
        assert dataset_type.storageClass_name == storage_class
        assert set(dataset_type.dimensions.required) == DIMENSIONS
        refs = list(butler.query_datasets(name, collections=demo["calexp_collection"]))
        assert len(refs) == 2 and {ref.run for ref in refs} == {demo["calexp_collection"]}


def test_stored_calexp(demo: dict, butler: Butler, default_model) -> None:
    config = demo["config"]
    calexp = butler.get("calexp", demo["data_ids"][0])
    assert calexp.image.array.shape == (HEIGHT, WIDTH)
    assert (calexp.bbox.x.start, calexp.bbox.y.start) == (0, 0)
    assert calexp.unit == u.nJy and calexp.variance.unit == u.nJy**2
    assert calexp.band == default_model.conditions.band
    assert calexp.obs_info.physical_filter == config.physical_filter
    assert calexp.obs_info.instrument == config.instrument
    descriptions = calexp.mask.schema.descriptions
    for name in ("NO_DATA", "BAD", "SAT", "EDGE", "CR", "INTRP", "SUSPECT", "DETECTED"):
        assert descriptions[name], name
    no_data = calexp.mask.get("NO_DATA")
    assert no_data.any() and np.isnan(calexp.image.array[no_data]).all()
    assert np.isfinite(calexp.image.array[~no_data]).all()
    assert (calexp.variance.array > 0).all()
    for plane in ("BAD", "EDGE"):
        assert calexp.mask.get(plane).any(), plane
    # Background subtracted: faint pixels scatter around zero with the stored variance.
    sigma = np.sqrt(calexp.variance.array)
    faint = ~no_data & (np.abs(calexp.image.array) < 3 * sigma)
    assert abs(np.median(calexp.image.array[faint] / sigma[faint])) < 0.2
    assert np.std(calexp.image.array[faint] / sigma[faint]) == pytest.approx(1.0, abs=0.15)
    for x, y in ((0.0, 0.0), (WIDTH - 1.0, HEIGHT - 1.0)):
        assert pixel_scale_arcsec(calexp.sky_projection, x, y) == pytest.approx(
            (default_model.conditions.pixel_scale_arcsec,) * 2, rel=1e-3
        )


def test_tables_bench_variance_is_in_njy_for_a_calexp_in_counts(demo: dict, butler: Butler) -> None:
    # The second detector is stored in instrumental counts: the true SNR of the tables bench divides
    # fluxes in nJy by its variance, which must be in nJy^2 as the first detector's is.
    in_njy, in_counts = (butler.get("calexp", data_id) for data_id in demo["data_ids"])
    assert in_njy.unit == u.nJy and in_counts.unit != u.nJy
    stored = np.median(in_counts.variance.array)
    calibrated = np.median(_variance_njy2(in_counts))
    assert stored / calibrated > 1.2  # the counts are not nJy: the test can tell them apart
    assert calibrated == pytest.approx(np.median(_variance_njy2(in_njy)), rel=0.05)
    np.testing.assert_array_equal(_variance_njy2(in_njy), in_njy.variance.array)


@pytest.mark.parametrize("psf_model", ["moffat", "gaussian"])
def test_visit_image_round_trip(demo: dict, default_model, psf_model: str) -> None:
    """A VisitImage built from arrays survives a Butler put/get, its spatially varying PSF included."""
    rng = np.random.default_rng(5)
    height, width = 47, 61
    image = rng.normal(0.0, 30.0, size=(height, width)).astype(np.float32)
    variance = np.full((height, width), 900.0, dtype=np.float32)
    planes = {name: rng.random((height, width)) < 0.05 for name in DEMO_MASK_PLANES}
    field = LinearPsfField(fwhm_origin_arcsec=0.7, gradient_x=0.004, gradient_y=-0.002)
    visit_image = make_visit_image(
        image,
        variance,
        planes,
        field,
        instrument=demo["config"].instrument,
        visit=demo["data_ids"][0]["visit"],
        detector=demo["data_ids"][0]["detector"],
        physical_filter=demo["config"].physical_filter,
        band="r",
        pointing_deg=(53.1, -28.1),
        pixel_scale_arcsec=0.2,
        psf_model=psf_model,
    )
    run = f"test/round_trip/{psf_model}"
    with Butler.from_config(demo["root"], writeable=True, run=run) as butler:
        butler.registry.registerDatasetType(
            DatasetType("round_trip", DIMENSIONS, "VisitImage", universe=butler.dimensions)
        )
        butler.put(visit_image, "round_trip", demo["data_ids"][0])
        read = butler.get("round_trip", demo["data_ids"][0], collections=run)
    np.testing.assert_array_equal(read.image.array, image)
    np.testing.assert_array_equal(read.variance.array, variance)
    for name, selected in planes.items():
        np.testing.assert_array_equal(read.mask.get(name), selected, err_msg=name)
        assert read.mask.schema.descriptions[name] == DEMO_MASK_PLANES[name]
    assert read.band == "r"
    # The PSF keeps its variation: kernels at two positions follow the field, before and after the trip.
    family = default_model.conditions.replace(psf_model=psf_model)
    kernels = []
    for x, y in ((0.0, 0.0), (width - 1.0, height - 1.0)):
        expected = float(field.fwhm_at(x, y))
        for psf in (visit_image.psf, read.psf):
            assert kernel_fwhm_arcsec(psf, x, y, family) == pytest.approx(expected, rel=0.01), (x, y)
        kernel = np.asarray(read.psf.compute_kernel_image(x=x, y=y).array)
        assert kernel.sum() == pytest.approx(1.0, abs=1e-6)
        kernels.append(kernel)
    assert np.abs(kernels[0] - kernels[1]).max() > 1e-3
    # TAN projection: 0.2"/px, north up (+y), east left (-x).
    assert pixel_scale_arcsec(read.sky_projection, 30.0, 23.0) == pytest.approx((0.2, 0.2), rel=1e-4)
    sky = read.sky_projection.pixel_to_sky(x=np.array([30.0, 31.0, 30.0]), y=np.array([23.0, 23.0, 24.0]))
    assert sky[1].ra < sky[0].ra and sky[2].dec > sky[0].dec


def test_truth_table(demo: dict, butler: Butler, default_model) -> None:
    trained = default_model.simulator.psf_fwhm_range_arcsec
    for data_id, n_truth in zip(demo["data_ids"], demo["n_truth"], strict=True):
        truth = butler.get("bliss_truth", data_id)
        calexp = butler.get("calexp", data_id)
        assert not isinstance(truth, QTable) and len(truth) == n_truth
        units = {
            "coord_ra": u.deg,
            "coord_dec": u.deg,
            "x": u.pix,
            "y": u.pix,
            "flux": u.nJy,
            "mag": u.mag,
            "psf_fwhm": u.arcsec,
            "disk_hlr": u.arcsec,
            "bulge_hlr": u.arcsec,
            "position_angle": u.deg,
        }
        dimensionless = ("id", "is_galaxy", "disk_frac", "disk_q", "bulge_q", "visit", "detector")
        assert set(units) | set(dimensionless) <= set(truth.colnames)
        # The packaged model's prior draws star-forming knots: their four fields are kept.
        assert set(KNOT_FIELDS) <= set(truth.colnames) and (np.asarray(truth["knot_count"]) > 0).any()
        for name in truth.colnames:
            assert truth[name].description, name
            assert truth[name].unit == units.get(name), name
        assert len(np.unique(truth["id"])) == len(truth)
        assert (truth["visit"] == data_id["visit"]).all() and (truth["detector"] == data_id["detector"]).all()
        # Parent pixel coordinates, pixel centres at integers, on the detector.
        assert (truth["x"] >= -0.5).all() and (truth["x"] < WIDTH - 0.5).all()
        assert (truth["y"] >= -0.5).all() and (truth["y"] < HEIGHT - 0.5).all()
        sky = calexp.sky_projection.pixel_to_sky(x=np.asarray(truth["x"]), y=np.asarray(truth["y"]))
        np.testing.assert_allclose(truth["coord_ra"], sky.ra.deg, rtol=0, atol=1e-9)
        np.testing.assert_allclose(truth["coord_dec"], sky.dec.deg, rtol=0, atol=1e-9)
        assert (truth["flux"] > 0).all()
        np.testing.assert_allclose(truth["mag"], flux_njy_to_mag(np.asarray(truth["flux"])), rtol=1e-6)
        assert truth["is_galaxy"].dtype == bool
        # The PSF at each source is within the trained range and is the PSF stored in the calexp there.
        assert (truth["psf_fwhm"] >= trained[0]).all() and (truth["psf_fwhm"] <= trained[1]).all()
        for row in truth[:5]:
            measured = kernel_fwhm_arcsec(calexp.psf, row["x"], row["y"], default_model.conditions)
            assert measured == pytest.approx(row["psf_fwhm"], rel=0.01)


def test_truth_positions_match_pixels(demo: dict, butler: Butler) -> None:
    """Bright truth sources sit on significant flux at their (x column, y row) in the calexp."""
    n_bright = 0
    for data_id in demo["data_ids"]:
        truth = butler.get("bliss_truth", data_id)
        calexp = butler.get("calexp", data_id)
        image, sigma = calexp.image.array, np.sqrt(calexp.variance.array)
        for row in truth[truth["flux"] > 3000]:
            col, line = int(round(row["x"])), int(round(row["y"]))
            box = (slice(line - 2, line + 3), slice(col - 2, col + 3))
            if not (2 <= col < WIDTH - 2 and 2 <= line < HEIGHT - 2) or not np.isfinite(image[box]).all():
                continue
            n_bright += 1
            snr = image[box].sum() / np.sqrt(np.square(sigma[box]).sum())
            assert snr > 5, (data_id, row["id"], snr)
    assert n_bright > 0


def test_any_detector_size(tmp_path, default_model) -> None:
    config = DemoRepoConfig(n_visits=1, n_detectors=1, height=67, width=70, seed=1)
    summary = build_demo_repo(tmp_path / "odd", config, model=default_model)
    with Butler.from_config(summary["root"], collections=summary["calexp_collection"]) as butler:
        calexp = butler.get("calexp", summary["data_ids"][0])
        truth = butler.get("bliss_truth", summary["data_ids"][0])
    assert calexp.image.array.shape == (67, 70)
    assert (truth["x"] < 69.5).all() and (truth["y"] < 66.5).all()


def test_detector_without_sources(tmp_path, default_model) -> None:
    # With this seed the 64 x 64 detector gets no source of its own (only light from the border tiles).
    config = DemoRepoConfig(n_visits=1, n_detectors=1, height=64, width=64, seed=2, saturated_star_mag=None)
    summary = build_demo_repo(tmp_path / "empty", config, model=default_model)
    assert summary["n_truth"] == [0]
    with Butler.from_config(summary["root"], collections=summary["calexp_collection"]) as butler:
        truth = butler.get("bliss_truth", summary["data_ids"][0])
    assert len(truth) == 0 and {"x", "y", "coord_ra", "coord_dec", "flux"} <= set(truth.colnames)


def test_simulation_without_any_source(tmp_path, default_model) -> None:
    empty = dataclasses.replace(
        default_model, prior=dataclasses.replace(default_model.prior, source_density_per_arcmin2=1e-9)
    )
    config = DemoRepoConfig(n_visits=1, n_detectors=1, height=64, width=64, seed=2, saturated_star_mag=None)
    summary = build_demo_repo(tmp_path / "empty", config, model=empty)
    assert summary["n_truth"] == [0]


def test_existing_repo_needs_overwrite(tmp_path, default_model) -> None:
    root = tmp_path / "repo"
    config = DemoRepoConfig(n_visits=1, n_detectors=1, height=96, width=96, seed=2)
    build_demo_repo(root, config, model=default_model)
    with pytest.raises(FileExistsError, match="overwrite"):
        build_demo_repo(root, config, model=default_model)
    summary = build_demo_repo(
        root,
        DemoRepoConfig(n_visits=1, n_detectors=1, height=96, width=104),
        model=default_model,
        overwrite=True,
    )
    with Butler.from_config(summary["root"], collections=summary["calexp_collection"]) as butler:
        assert butler.get("calexp", summary["data_ids"][0]).image.array.shape == (96, 104)


@pytest.mark.parametrize(
    "field, value",
    [
        ("height", 0),
        ("width", -4),
        ("n_visits", 0),
        ("n_detectors", 0),
        ("psf_fwhm_range_arcsec", (1.0, 0.9)),
    ],
)
def test_bad_config_values(field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        DemoRepoConfig(**{field: value})


def test_psf_range_outside_the_model(tmp_path, default_model) -> None:
    low, high = default_model.simulator.psf_fwhm_range_arcsec
    root = tmp_path / "repo"
    for fwhm_range in ((low - 0.1, high), (low, high + 0.3)):
        with pytest.raises(ValueError, match="psf_fwhm_range_arcsec"):
            build_demo_repo(root, DemoRepoConfig(psf_fwhm_range_arcsec=fwhm_range), model=default_model)
    assert not root.exists()


def test_command_line(tmp_path, capsys) -> None:
    root = tmp_path / "cli"
    argv = [str(root), "--visits", "1", "--detectors", "1", "--height", "64", "--width", "66", "--seed", "3"]
    assert make_demo_repo_main(argv) == 0
    assert "BlissSim" in capsys.readouterr().out
    assert make_demo_repo_main(argv) == 1
    assert "overwrite" in capsys.readouterr().err
    assert make_demo_repo_main([str(tmp_path / "bad"), "--height", "0"]) == 1
    assert "height" in capsys.readouterr().err


def test_demo_visits_take_the_configured_bands(tmp_path) -> None:
    import torch

    from lsst.meas.extensions.bliss import (
        BlissEncoder,
        BlissModel,
        EncoderConfig,
        PriorConfig,
        SimulatorConfig,
        SurveyConditions,
    )

    torch.manual_seed(0)
    model = BlissModel(
        BlissEncoder(EncoderConfig(pixel_channels=(8, 8, 16), tile_blocks=1, head_channels=16)),
        SurveyConditions.from_survey(),
        PriorConfig(),
        SimulatorConfig(psf_fwhm_range_arcsec=(0.6, 1.2)),
        band_conditions=tuple(SurveyConditions.from_survey("LSST", band) for band in "gri"),
    )
    config = DemoRepoConfig(
        n_visits=3,
        n_detectors=1,
        height=64,
        width=64,
        defects=False,
        saturated_star_mag=None,
        counts_calexps=0,
        visit_bands=("g", "r", "i"),
    )
    summary = build_demo_repo(tmp_path / "repo", config, model=model)
    repo = Butler.from_config(summary["root"], collections=summary["calexp_collection"])
    bands = {}
    for data_id in summary["data_ids"]:
        calexp = repo.get("calexp", data_id)
        bands[data_id["visit"]] = calexp.band
        # Each visit has its band's sky: the g sky is darker than the i sky.
        bands[(data_id["visit"], "noise")] = float(np.sqrt(np.median(calexp.variance.array)))
    assert [bands[visit] for visit in (1000, 1001, 1002)] == ["g", "r", "i"]
    assert bands[(1000, "noise")] < bands[(1001, "noise")] < bands[(1002, "noise")]
    assert DemoRepoConfig().visit_bands == ()
    with pytest.raises(
        ValueError, match=r"not trained for band\(s\) \['z'\] \(its bands: \['g', 'r', 'i'\]\)"
    ):
        build_demo_repo(tmp_path / "other", dataclasses.replace(config, visit_bands=("g", "z")), model=model)
