"""Tile and full catalogs and the conversions between them."""

import numpy as np
import pytest
import torch

from lsst.meas.extensions.bliss import SOURCE_FIELDS, FullCatalog, PriorConfig, SourcePrior, SurveyConditions


def random_tile_catalog(seed: int = 3, max_sources_per_tile: int = 2):
    prior = SourcePrior(
        PriorConfig(source_density_per_arcmin2=3000.0),
        SurveyConditions.from_survey(),
        tile_size=4,
        max_sources_per_tile=max_sources_per_tile,
    )
    return prior.sample(3, 8, 10, torch.Generator().manual_seed(seed), dtype=torch.float64)


def make_full(x, y, flux, height=16, width=16) -> FullCatalog:
    x = torch.tensor([x], dtype=torch.float64)
    y = torch.tensor([y], dtype=torch.float64)
    fields = {name: torch.zeros_like(x) for name in SOURCE_FIELDS}
    fields["flux_njy"] = torch.tensor([flux], dtype=torch.float64)
    fields["is_galaxy"] = torch.zeros_like(x, dtype=torch.bool)
    return FullCatalog(height, width, torch.tensor([x.shape[1]]), x, y, fields)


def test_tile_to_full_to_tile_round_trip() -> None:
    tiles = random_tile_catalog()
    assert int(tiles.n_sources.max()) == 2  # the density makes multi-source tiles occur
    full = tiles.to_full_catalog()
    assert full.n_sources.tolist() == tiles.n_sources.sum(dim=(1, 2)).tolist()
    again = full.to_tile_catalog(tile_size=4, max_sources_per_tile=2)
    assert again.n_dropped == 0
    assert torch.equal(again.n_sources, tiles.n_sources)
    # Within a tile the brightest comes first; compare order-independent per-tile sums.
    valid, again_valid = tiles.is_valid, again.is_valid
    for name in ("flux_njy", "disk_hlr_arcsec", "position_angle_rad"):
        ours = torch.where(valid, tiles.fields[name], 0).sum(-1)
        theirs = torch.where(again_valid, again.fields[name], 0).sum(-1)
        assert torch.allclose(ours, theirs)
    x, y = tiles.pixel_positions()
    x2, y2 = again.pixel_positions()
    assert torch.allclose(torch.where(valid, x, 0).sum(-1), torch.where(again_valid, x2, 0).sum(-1))
    assert torch.allclose(torch.where(valid, y, 0).sum(-1), torch.where(again_valid, y2, 0).sum(-1))


def test_full_to_tile_to_full_round_trip() -> None:
    full = random_tile_catalog(seed=5, max_sources_per_tile=4).to_full_catalog()
    back = full.to_tile_catalog(4, 4).to_full_catalog()
    for b in range(full.batch_size):
        n = int(full.n_sources[b])
        ours = sorted(
            zip(
                full.x[b, :n].tolist(),
                full.y[b, :n].tolist(),
                full.fields["flux_njy"][b, :n].tolist(),
                strict=True,
            )
        )
        theirs = sorted(
            zip(
                back.x[b, :n].tolist(),
                back.y[b, :n].tolist(),
                back.fields["flux_njy"][b, :n].tolist(),
                strict=True,
            )
        )
        np.testing.assert_allclose(np.array(theirs), np.array(ours))


def test_tile_boundaries_follow_pixel_centre_convention() -> None:
    # Tile 0 covers x in [-0.5, 3.5); x = 3.49 is in tile 0 and x = 3.5 in tile 1.
    tiles = make_full([3.49, 3.5], [0.0, 0.0], [1.0, 2.0]).to_tile_catalog(4, 1)
    assert tiles.n_sources[0, 0, :2].tolist() == [1, 1]
    assert tiles.locations[0, 0, 1, 0, 0].item() == pytest.approx(0.0)


def test_overfull_tiles_keep_the_brightest_and_count_the_rest() -> None:
    full = make_full([1.0, 2.0, 0.5, 20.0], [1.0, 2.0, 1.5, 1.0], [5.0, 9.0, 7.0, 1.0])
    tiles = full.to_tile_catalog(4, 2)
    assert tiles.n_dropped == 1  # the faintest of the three in tile (0, 0); x=20 is outside
    assert tiles.n_sources.sum().item() == 2
    assert sorted(tiles.fields["flux_njy"][0, 0, 0].tolist()) == [7.0, 9.0]


def test_bad_shapes_and_sizes_are_clear_errors() -> None:
    full = make_full([1.0], [1.0], [1.0], height=18)
    with pytest.raises(ValueError, match="not a multiple of tile_size"):
        full.to_tile_catalog(4, 1)
    with pytest.raises(ValueError, match="n_sources of shape"):
        FullCatalog(16, 16, torch.tensor([1, 1]), full.x, full.y, full.fields)
    fields = dict(full.fields)
    del fields["disk_q"]
    with pytest.raises(ValueError, match="missing field"):
        FullCatalog(16, 16, full.n_sources, full.x, full.y, fields)


def test_concatenate_keeps_each_images_sources_in_order() -> None:
    first = random_tile_catalog(seed=4).to_full_catalog()
    second = random_tile_catalog(seed=5).to_full_catalog()
    joined = first.concatenate(second)
    assert torch.equal(joined.n_sources, first.n_sources + second.n_sources)
    for image in range(first.batch_size):
        n, m = int(first.n_sources[image]), int(second.n_sources[image])
        assert torch.equal(joined.x[image, : n + m], torch.cat([first.x[image, :n], second.x[image, :m]]))
        for name, value in joined.fields.items():
            expected = torch.cat([first.fields[name][image, :n], second.fields[name][image, :m]])
            assert torch.equal(value[image, : n + m], expected), name
    with pytest.raises(ValueError, match="Cannot concatenate a catalog of 1 images of 16x16"):
        first.concatenate(make_full([1.0], [2.0], [10.0]))
