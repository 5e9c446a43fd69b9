"""The Rubin-native outputs of BlissDeblendMeasureTask: DP1 Source columns against the package's Felis
schema, blend families, unique IDs across visits and detectors, flagged HSM failures, compact models."""

import numpy as np
import pytest
import torch
from astropy.table import Table
from lsst.daf.butler import Butler

from lsst.meas.extensions.bliss.cli import bench_main
from lsst.meas.extensions.bliss.pipeline import (
    DEFAULT_MODEL_RUN,
    DP1_SOURCE_COLUMNS,
    MODELS_FORMAT_VERSION,
    PIXEL_FLAG_PLANES,
    BlissDeblendMeasureConfig,
    BlissDeblendMeasureTask,
    blend_family_problems,
    children,
    ingest_model,
    load_felis_schema,
    models_from_table,
    schema_mismatches,
)
from lsst.meas.extensions.bliss.pipeline.demo import DemoRepoConfig, build_demo_repo


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list:
    """The task's outputs on two visits x two small demo detectors, with Butler-made source IDs."""
    root = tmp_path_factory.mktemp("outputs") / "repo"
    summary = build_demo_repo(
        str(root), DemoRepoConfig(n_visits=2, n_detectors=2, height=96, width=128, seed=7)
    )
    ingest_model(root)
    config = BlissDeblendMeasureConfig()
    config.inference.n_samples = 2
    config.inference.device = "cpu"
    results = []
    with Butler.from_config(
        str(root), collections=[summary["calexp_collection"], DEFAULT_MODEL_RUN]
    ) as butler:
        model = butler.get("bliss_model", {})
        for ref in butler.query_datasets("calexp", explain=False):
            data_id = butler.registry.expandDataId(ref.dataId)
            task = BlissDeblendMeasureTask(config=config)
            results.append(
                task.run(
                    butler.get(ref),
                    model,
                    id_generator=config.id_generator.apply(data_id),
                    visit=int(data_id["visit"]),
                    detector=int(data_id["detector"]),
                )
            )
    return results


def test_the_felis_schema_is_valid_and_every_written_column_matches_it(runs) -> None:
    schema = load_felis_schema()
    assert {table.name for table in schema.tables} == {"bliss_source", "bliss_catalog_samples"}
    for result in runs:
        assert schema_mismatches(result.bliss_source, "bliss_source", schema) == []
        assert schema_mismatches(result.bliss_catalog_samples, "bliss_catalog_samples", schema) == []
    # A renamed column, a changed unit and a changed description are each caught.
    table = runs[0].bliss_source.copy()
    table.rename_column("sourceId", "id")
    table["x"].unit = "arcsec"
    table["y"].description = "something else"
    problems = "\n".join(schema_mismatches(table, "bliss_source", schema))
    for expected in (
        "id: written but not in the schema",
        "sourceId: in the schema",
        "x: unit",
        "y: description",
    ):
        assert expected in problems


def test_dp1_source_columns_are_written_with_dp1_units(runs) -> None:
    table = runs[0].bliss_source
    assert [name for name in DP1_SOURCE_COLUMNS if name not in table.colnames] == []
    units = {"coord_ra": "deg", "raErr": "deg", "ra_dec_Cov": "deg2", "x": "pix", "ixx": "pix2"}
    for name, unit in units.items():
        assert table[name].unit == unit, name
    for name in ("sourceId", "parentSourceId", "visit"):
        assert table[name].dtype == np.int64, name
    assert table["deblend_nChild"].dtype == np.int32 and table["detector"].dtype == np.int32
    assert (table["band"] == "r").all() and (table["physical_filter"] == "r_sim").all()
    detected = children(table)
    assert set(np.unique(detected["extendedness"])) <= {0.0, 1.0}
    np.testing.assert_array_equal(
        detected["extendedness"] == 1.0, np.asarray(detected["bliss_galaxy_prob"]) > 0.5
    )
    assert (np.asarray(detected["raErr"]) > 0).all() and (np.asarray(detected["decErr"]) > 0).all()


def test_blend_families_are_consistent_in_sources_and_samples(runs) -> None:
    n_families = 0
    for result in runs:
        table = result.bliss_source
        assert blend_family_problems(table) == []
        is_parent = np.asarray(table["deblend_nChild"]) > 0
        n_families += int(is_parent.sum())
        isolated = ~is_parent & (np.asarray(table["parentSourceId"]) == 0)
        assert (np.asarray(table["deblend_nChild"])[isolated] == 0).all()
        # A parent sits among its children, carries no measurement and ORs their pixel flags.
        for row in table[is_parent]:
            family = table[np.asarray(table["parentSourceId"]) == row["sourceId"]]
            assert len(family) == row["deblend_nChild"] >= 2
            assert family["x"].min() - 1 <= row["x"] <= family["x"].max() + 1
            assert np.ma.is_masked(row["bliss_flux"]) and np.ma.is_masked(row["hsmShapeRegauss_e1"])
            for name, *_ in PIXEL_FLAG_PLANES:
                assert row[name] == bool(np.any(family[name])), name
        samples = result.bliss_catalog_samples
        parents = set(np.asarray(table["sourceId"])[is_parent].tolist()) | {0}
        assert set(np.asarray(samples["parentSourceId"]).tolist()) <= parents
    assert n_families > 0  # the demo detectors hold blends

    broken = runs[0].bliss_source.copy()
    parent = int(np.flatnonzero(np.asarray(broken["deblend_nChild"]) > 0)[0])
    broken["deblend_nChild"][parent] += 1
    assert any("deblend_nChild" in problem for problem in blend_family_problems(broken))


def test_source_ids_are_unique_across_visits_and_detectors(runs) -> None:
    ids = np.concatenate([np.asarray(result.bliss_source["sourceId"]) for result in runs])
    assert len(runs) == 4 and len(np.unique(ids)) == len(ids) and (ids > 0).all()


def test_hsm_failures_are_flagged_never_nan(runs) -> None:
    for result in runs:
        table = children(result.bliss_source)
        flag = np.asarray(table["hsmShapeRegauss_flag"])
        assert (~flag).any()
        for name in (
            "hsmShapeRegauss_e1",
            "hsmShapeRegauss_e2",
            "hsmShapeRegauss_sigma",
            "hsmShapeRegauss_resolution",
        ):
            values, masked = np.ma.getdata(table[name]), np.ma.getmaskarray(table[name])
            np.testing.assert_array_equal(masked, flag)
            assert np.isfinite(values[~flag]).all(), name
        resolution = np.ma.getdata(table["hsmShapeRegauss_resolution"])[~flag]
        assert ((resolution >= 0) & (resolution <= 1)).all()


def test_compact_models_render_the_deblending_stamps_again(runs) -> None:
    for result in runs:
        table = result.bliss_deblended_models
        assert table.meta["bliss_models_format"] == MODELS_FORMAT_VERSION and "model" not in table.colnames
        assert list(table["sourceId"]) == list(children(result.bliss_source)["sourceId"])
        rendered = models_from_table(table)
        original = result.source_models
        assert rendered.stamp_size == original.stamp_size
        torch.testing.assert_close(
            rendered.models, original.models, rtol=1e-6, atol=1e-6 * float(original.models.abs().max())
        )
        torch.testing.assert_close(rendered.x0, original.x0)
        torch.testing.assert_close(rendered.half_size, original.half_size)


def test_compact_models_refuse_other_layouts_and_missing_autoencoder(runs) -> None:
    table = runs[0].bliss_deblended_models.copy()
    table.meta["bliss_models_format"] = 1
    with pytest.raises(ValueError, match="bliss_models_format=1"):
        models_from_table(table)
    autoencoded = runs[0].bliss_deblended_models.copy()
    width = 8
    autoencoded["model_type"] = np.array(["autoencoder"] * len(autoencoded), dtype="U11")
    for name in ("ae_latent_mean", "ae_latent_std"):
        autoencoded[name] = np.zeros((len(autoencoded), width), dtype=np.float32)
    autoencoded["ae_flux"] = np.ones(len(autoencoded), dtype=np.float32)
    with pytest.raises(ValueError, match="needs the autoencoder"):
        models_from_table(Table(autoencoded, meta=autoencoded.meta))


def test_tables_bench_quick(tmp_path) -> None:
    path = tmp_path / "tables.json"
    assert bench_main(["tables", "--quick", "--json", str(path)]) == 0
    import json

    results = json.loads(path.read_text())
    assert results["missing_dp1_columns"] == [] and results["felis_valid"] is True
    assert results["parent_child_consistent"] is True
    assert results["models_bytes_over_calexp_bytes"] <= 0.05
    # The noise floor is measured on the same scored galaxies and reported beside the task's figure.
    for name in (
        "hsm_e_scatter_snr20_noise_floor",
        "hsm_e_scatter_snr20_resolved_noise_floor",
        "hsm_e_scatter_snr20_over_noise_floor",
    ):
        assert np.isfinite(results[name]) and results[name] > 0, name
    assert 0 <= results["n_galaxies_snr20_noise_floor_failed"] <= results["n_galaxies_snr20_scored"]


def _galaxies_alone(x: np.ndarray, y: np.ndarray) -> Table:
    """A truth table of smooth bulge+disk galaxies at (x, y), pixels, in the demo truth's columns."""
    n_galaxies = len(x)
    rng = np.random.default_rng(3)
    return Table(
        {
            "x": x,
            "y": y,
            "flux": np.full(n_galaxies, 5000.0),
            "is_galaxy": np.ones(n_galaxies, dtype=bool),
            "disk_frac": rng.uniform(0.5, 1.0, n_galaxies),
            "disk_hlr": rng.uniform(0.6, 1.0, n_galaxies),
            "disk_q": rng.uniform(0.4, 0.9, n_galaxies),
            "bulge_hlr": rng.uniform(0.2, 0.4, n_galaxies),
            "bulge_q": rng.uniform(0.6, 0.9, n_galaxies),
            "position_angle": rng.uniform(0.0, 180.0, n_galaxies),
            "psf_fwhm": np.full(n_galaxies, 0.7),
        }
    )


def test_tables_bench_noise_floor_follows_the_variance_at_each_galaxy() -> None:
    """Galaxies where the variance is zero keep the noiseless reference's shapes exactly; elsewhere
    their scatter about it grows with the noise (4 times the sigma, about 4 times the scatter)."""
    from lsst.meas.extensions.bliss import SurveyConditions
    from lsst.meas.extensions.bliss.bench._tables_suite import (
        _alone_shapes,
        _draw_alone,
        _noise_floor_shapes,
    )
    from lsst.meas.extensions.bliss.metrics import robust_scatter

    # Not square, and noisy only at x < 100: a stamp read at the wrong pixels (rows for columns, or
    # the wrong corner) would put noise on the galaxies of the quiet half.
    height, width, n_each = 100, 200, 12
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(30.0, 70.0, n_each), rng.uniform(130.0, 170.0, n_each)])
    y = rng.uniform(30.0, 70.0, 2 * n_each)
    conditions = SurveyConditions.from_survey()
    alone = _draw_alone(_galaxies_alone(x, y), conditions, height, width)
    reference = _alone_shapes(alone, 100.0)
    assert not reference["flag"].any()
    variance = np.zeros((height, width))
    variance[:, :100] = 100.0
    noisy, quiet = np.arange(n_each), np.arange(n_each, 2 * n_each)

    def scatter(scale: float) -> tuple[float, dict[str, np.ndarray]]:
        shapes = _noise_floor_shapes(alone, scale * variance, 100.0, np.random.default_rng(1))
        residuals = np.stack([shapes["e1"] - reference["e1"], shapes["e2"] - reference["e2"]], axis=1)
        return robust_scatter(residuals[noisy]), shapes

    low, shapes = scatter(1.0)
    high, _ = scatter(16.0)
    for name in ("e1", "e2", "resolution"):
        np.testing.assert_array_equal(shapes[name][quiet], reference[name][quiet])
    assert 0.0 < low and 2.5 * low < high
    zero = _noise_floor_shapes(alone, 0.0 * variance, 100.0, np.random.default_rng(1))
    for name in ("e1", "e2", "resolution"):
        np.testing.assert_array_equal(zero[name], reference[name])


def test_without_deblending_pixel_flags_come_from_the_centre_and_columns_still_match(tmp_path) -> None:
    root = tmp_path / "repo"
    summary = build_demo_repo(
        str(root), DemoRepoConfig(n_visits=1, n_detectors=1, height=96, width=96, seed=3)
    )
    ingest_model(root)
    config = BlissDeblendMeasureConfig()
    config.inference.n_samples = 0
    config.inference.device = "cpu"
    config.do_deblend = False
    with Butler.from_config(
        str(root), collections=[summary["calexp_collection"], DEFAULT_MODEL_RUN]
    ) as butler:
        (ref,) = butler.query_datasets("calexp", explain=False)
        result = BlissDeblendMeasureTask(config=config).run(butler.get(ref), butler.get("bliss_model", {}))
    table = result.bliss_source
    assert len(table) > 0 and (np.asarray(table["deblend_nChild"]) == 0).all()
    assert (np.asarray(table["parentSourceId"]) == 0).all()
    assert schema_mismatches(table, "bliss_source", complete=False) == []
    assert "hsmShapeRegauss_e1: in the schema but not written" in schema_mismatches(table, "bliss_source")
    for name, *_ in PIXEL_FLAG_PLANES:
        assert table[name].dtype == bool, name
