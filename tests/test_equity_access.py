"""Spatial access to care: distances, the floating-catchment family, FHIR input and the CLI.

The cross-check against PySAL's ``access`` package runs when it is importable (a dev dependency,
``access==1.1.10.post3``); it is skipped, with the reason shown by ``-ra``, when it is not.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from takamul.equity.access import (
    E2SFCA_BANDS,
    THREE_SFCA_BANDS,
    AccessInputError,
    CostTable,
    Decay,
    Demand,
    FcaResult,
    GaussianDecay,
    GravityDecay,
    StepDecay,
    Supply,
    Uniform,
    _threshold_weights,
    aggregate_to_areas,
    compute_access,
    demand_from_patients,
    enhanced_two_stage_fca,
    fca_ratio,
    gravity_model,
    great_circle,
    load_fhir,
    nearest_facility,
    rank_areas,
    scale_bands,
    supply_from_locations,
    three_stage_fca,
    two_stage_fca,
    weighted_catchment,
)
from takamul.equity.access_cli import CSV_COLUMNS, access_app
from takamul.equity.geo import EARTH_RADIUS_KM, GreatCircle, haversine_km
from takamul.synth import generate, load_config

# -- distances ---------------------------------------------------------------------------------


def _law_of_cosines_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """An independent great-circle formula to check the haversine against."""
    p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    c = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
    return EARTH_RADIUS_KM * math.acos(max(-1.0, min(1.0, c)))


@pytest.mark.parametrize(
    ("a", "b", "expected_km", "tolerance_km"),
    [
        # Riyadh – Jeddah: about 845 km as the crow flies (about 950 km by road).
        ((24.7136, 46.6753), (21.5433, 39.1728), 845.0, 5.0),
        # Tehran – Mashhad: about 740 km great-circle.
        ((35.6892, 51.3890), (36.2605, 59.6168), 740.0, 8.0),
        # London – Paris: 343.5 km, the textbook example.
        ((51.5074, -0.1278), (48.8566, 2.3522), 343.5, 1.0),
    ],
)
def test_haversine_known_city_pairs(
    a: tuple[float, float], b: tuple[float, float], expected_km: float, tolerance_km: float
) -> None:
    d = float(haversine_km(a[0], a[1], b[0], b[1]))
    assert abs(d - expected_km) < tolerance_km
    assert d == pytest.approx(_law_of_cosines_km(*a, *b), rel=1e-9)
    assert float(haversine_km(b[0], b[1], a[0], a[1])) == pytest.approx(d, rel=1e-15)
    assert float(haversine_km(a[0], a[1], a[0], a[1])) == 0.0


def test_haversine_extremes() -> None:
    # Antipodes: half the circumference, without NaN from rounding.
    assert float(haversine_km(0.0, 0.0, 0.0, 180.0)) == pytest.approx(math.pi * EARTH_RADIUS_KM)
    assert float(haversine_km(90.0, 0.0, -90.0, 0.0)) == pytest.approx(math.pi * EARTH_RADIUS_KM)
    # Across the date line.
    assert float(haversine_km(0.0, 179.5, 0.0, -179.5)) == pytest.approx(111.195, abs=1e-3)


def test_great_circle_blocks_match_haversine() -> None:
    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(-60, 60, 500), rng.uniform(-180, 180, 500)
    # Some destinations a centimetre from an origin, where the chord form rounds the most.
    flat = np.r_[lat[:20] + 1e-7, rng.uniform(-60, 60, 60)]
    flon = np.r_[lon[:20], rng.uniform(-180, 180, 60)]
    gc = GreatCircle(lat, lon, flat, flon)
    exact = haversine_km(lat[:, None], lon[:, None], flat[None, :], flon[None, :])
    block = np.vstack([gc.block(0, 200), gc.block(200, 500)])
    # At most ~0.1 m absolute near zero; relative 1e-9 at every distance over 1 km.
    assert np.max(np.abs(block - exact)) < 2e-4
    far = exact > 1.0
    assert np.max(np.abs(block - exact)[far] / exact[far]) < 1e-9
    # The squared chord grows with distance: the km → chord threshold map agrees with it.
    chord2 = gc.chord2_block(0, 500)
    for km in (0.5, 10.0, 250.0, 5000.0):
        inside = exact <= km
        margin = np.abs(exact - km) > 1e-6
        assert np.array_equal((chord2 <= gc.km_to_chord2(km))[margin], inside[margin])


def test_great_circle_rejects_bad_coordinates() -> None:
    with pytest.raises(ValueError, match="latitude"):
        GreatCircle([91.0], [0.0], [0.0], [0.0])
    with pytest.raises(ValueError, match="missing"):
        GreatCircle([0.0], [np.nan], [0.0], [0.0])
    with pytest.raises(ValueError, match="differ"):
        GreatCircle([0.0, 1.0], [0.0], [0.0], [0.0])


def test_nearest_matches_brute_force_in_any_block_size() -> None:
    rng = np.random.default_rng(1)
    demand = Demand.build(range(997), rng.uniform(16, 32, 997), rng.uniform(36, 55, 997))
    supply = Supply.build(range(41), rng.uniform(16, 32, 41), rng.uniform(36, 55, 41))
    exact = haversine_km(
        demand.lat[:, None], demand.lon[:, None], supply.lat[None, :], supply.lon[None, :]
    )
    for block_elements in (1, 100, 10_000, 10_000_000):
        index, km = nearest_facility(demand, supply, block_elements=block_elements)
        assert np.array_equal(index, np.argmin(exact, axis=1))
        assert np.allclose(km, exact.min(axis=1), rtol=1e-12, atol=0)


# -- the toy examples, by hand -----------------------------------------------------------------

# Three places A, B, C (populations 100, 200, 300), two clinics X, Y (10 and 6 doctors):
#
#          X    Y
#     A    5   15
#     B    8    9
#     C   20    4        catchment d0 = 10
TOY_COST = [[5.0, 15.0], [8.0, 9.0], [20.0, 4.0]]


def _toy() -> tuple[Demand, Supply, CostTable]:
    demand = Demand.build(["A", "B", "C"], [0.0] * 3, [0.0] * 3, [100.0, 200.0, 300.0])
    supply = Supply.build(["X", "Y"], [0.0] * 2, [0.0] * 2, [10.0, 6.0])
    return demand, supply, CostTable(TOY_COST)


def test_two_stage_fca_by_hand() -> None:
    demand, supply, cost = _toy()
    result = two_stage_fca(demand, supply, cost, max_cost=10.0)
    # Step 1: X reaches A and B: R_X = 10 / (100 + 200) = 1/30;
    #         Y reaches B and C: R_Y = 6 / (200 + 300) = 0.012.
    assert result.catchment_demand.tolist() == [300.0, 500.0]
    assert result.supply_ratio == pytest.approx([1 / 30, 0.012], rel=1e-15)
    # Step 2: A reaches X, B both, C only Y.
    expected = [1 / 30, 1 / 30 + 0.012, 0.012]
    assert result.score == pytest.approx(expected, rel=1e-15)
    # Supply is conserved: 100/30 + 200 (1/30 + 0.012) + 300 × 0.012 = 10 + 6.
    assert float(demand.weight @ result.score) == pytest.approx(16.0, rel=1e-15)


def test_three_stage_fca_by_hand() -> None:
    demand, supply, cost = _toy()
    # One band: every facility within 10 weighs 1, so only the selection weights G matter.
    result = three_stage_fca(demand, supply, cost, decay=StepDecay.from_bands({10.0: 1.0}))
    # G: A → X only (1, 0); B → half each (0.5, 0.5); C → Y only (0, 1).
    # R_X = 10 / (1 × 100 + 0.5 × 200) = 0.05; R_Y = 6 / (0.5 × 200 + 1 × 300) = 0.015.
    assert result.supply_ratio == pytest.approx([0.05, 0.015], rel=1e-15)
    # A = 1 × 0.05; B = 0.5 × 0.05 + 0.5 × 0.015 = 0.0325; C = 0.015.
    assert result.score == pytest.approx([0.05, 0.0325, 0.015], rel=1e-15)
    assert float(demand.weight @ result.score) == pytest.approx(16.0, rel=1e-15)


def test_gravity_and_hansen_by_hand() -> None:
    # One clinic (10 doctors); 100 people 1 km away, 100 people 2 km away; weight 1/d.
    demand = Demand.build(["near", "far"], [0.0, 0.0], [0.0, 0.0], [100.0, 100.0])
    supply = Supply.build(["X"], [0.0], [0.0], [10.0])
    cost = CostTable([[1.0], [2.0]])
    decay = GravityDecay(scale=1.0, alpha=-1.0, min_cost=0.5)
    # Joseph & Bantock: V = 100 × 1 + 100 × 0.5 = 150; A = S f(d) / V.
    gravity = gravity_model(demand, supply, cost, decay=decay)
    assert gravity.score == pytest.approx([10 / 150, 5 / 150], rel=1e-15)
    # Hansen: A = S f(d), no competition.
    hansen = weighted_catchment(demand, supply, cost, decay=decay)
    assert hansen.score == pytest.approx([10.0, 5.0], rel=1e-15)


def test_enhanced_two_stage_fca_by_hand() -> None:
    demand, supply, cost = _toy()
    # Bands 0-6 (weight 1), 6-12 (0.5), beyond 12: 0.
    decay = StepDecay.from_bands({6.0: 1.0, 12.0: 0.5})
    result = enhanced_two_stage_fca(demand, supply, cost, decay=decay)
    # V_X = 100 × 1 + 200 × 0.5 = 200 → R_X = 0.05; V_Y = 200 × 0.5 + 300 × 1 = 400 → 0.015.
    assert result.supply_ratio == pytest.approx([0.05, 0.015], rel=1e-15)
    # A = 1 × 0.05; B = 0.5 × 0.05 + 0.5 × 0.015; C = 1 × 0.015.
    assert result.score == pytest.approx([0.05, 0.0325, 0.015], rel=1e-15)


def test_fca_ratio_by_hand() -> None:
    demand, supply, cost = _toy()
    neighbours = CostTable([[0.0, 3.0, 30.0], [3.0, 0.0, 9.0], [30.0, 9.0, 0.0]])
    result = fca_ratio(demand, supply, 10.0, cost, neighbours)
    # A: supply 10 (X) / demand 300 (A, B); B: 16 / 600; C: 6 / 500.
    assert result.score == pytest.approx([10 / 300, 16 / 600, 6 / 500], rel=1e-15)


def test_unreachable_demand_scores_zero() -> None:
    demand, supply, _ = _toy()
    cost = CostTable([[5.0, np.inf], [np.inf, np.inf], [np.inf, 4.0]])
    result = two_stage_fca(demand, supply, cost)
    assert result.score.tolist() == [0.1, 0.0, 0.02]
    index, nearest = nearest_facility(demand, supply, cost)
    assert index.tolist() == [0, -1, 1]
    assert nearest.tolist() == [5.0, np.inf, 4.0]


# -- decay functions: the values printed in access.weights' documentation ----------------------


def test_step_decay_matches_step_fn_semantics() -> None:
    fn = StepDecay.from_bands({20: 1, 40: 0.68, 60: 0.22})
    got = fn(np.arange(0.0, 71.0, 10.0))
    assert got.tolist() == [1, 1, 1, 0.68, 0.68, 0.22, 0.22, 0]
    assert fn(np.array([np.inf])).tolist() == [0.0]
    with pytest.raises(ValueError):
        StepDecay((10.0, 5.0), (1.0, 0.5))
    with pytest.raises(ValueError):
        StepDecay((10.0,), (-1.0,))


def test_gaussian_and_gravity_decay_values() -> None:
    gaussian = GaussianDecay(sigma=20)
    assert gaussian(np.array([0.0, 20.0, 40.0, 60.0])) == pytest.approx(
        [1.0, 0.6065306597126334, 0.1353352832366127, 0.011108996538242306], rel=1e-15
    )
    gravity = GravityDecay(scale=20, alpha=-2, min_cost=1)
    values = gravity(np.array([0.0, 1.0, 2.0, 20.0, 40.0, 60.0]))
    assert np.round(values, 2).tolist() == [400.0, 400.0, 100.0, 1.0, 0.25, 0.11]


@pytest.mark.parametrize("spread_km", [5.0, 60.0, 1000.0])
@pytest.mark.parametrize("max_cost", [None, 25.0])
def test_band_lookup_is_the_same_for_sparse_and_dense_catchments(
    spread_km: float, max_cost: float | None
) -> None:
    # Few pairs inside the bands take a shortcut (only they are looked up); compare with the
    # plain step function on every pair, whether the catchment is dense or sparse.
    rng = np.random.default_rng(int(spread_km))
    cost = rng.uniform(0.0, spread_km, (300, 40))
    cost[0, :4] = [10.0, 20.0, 30.0, 25.0]  # exactly on the thresholds and on max_cost
    decay = StepDecay.from_bands(E2SFCA_BANDS)
    expected = decay(cost)
    if max_cost is not None:
        expected[cost > max_cost] = 0.0
    got = _threshold_weights(cost, decay, max_cost, lambda c: c)
    assert np.array_equal(got, expected)


def test_scale_bands() -> None:
    assert scale_bands(E2SFCA_BANDS, 15.0) == {5.0: 1.0, 10.0: 0.68, 15.0: 0.22}
    assert max(scale_bands(THREE_SFCA_BANDS, 12.0)) == 12.0


def test_gravity_without_floor_at_zero_distance_is_an_error() -> None:
    demand = Demand.build(["a"], [24.0], [46.0])
    supply = Supply.build(["x"], [24.0], [46.0])
    with pytest.raises(AccessInputError, match="min_cost"):
        gravity_model(
            demand, supply, CostTable([[0.0]]), decay=GravityDecay(alpha=-1.0, min_cost=0.0)
        )


# -- invariants --------------------------------------------------------------------------------


def _random_instance(seed: int, n: int = 60, m: int = 9) -> tuple[Demand, Supply]:
    rng = np.random.default_rng(seed)
    demand = Demand.build(
        range(n),
        rng.uniform(24.0, 25.0, n),
        rng.uniform(46.0, 47.0, n),
        rng.integers(0, 5000, n),
        area=[f"area-{i % 7}" for i in range(n)],
    )
    supply = Supply.build(
        range(m), rng.uniform(24.0, 25.0, m), rng.uniform(46.0, 47.0, m), rng.integers(0, 30, m)
    )
    return demand, supply


MEASURES: dict[str, Callable[..., FcaResult]] = {
    "2sfca": lambda d, s, **k: two_stage_fca(d, s, max_cost=40.0, **k),
    "e2sfca": lambda d, s, **k: enhanced_two_stage_fca(
        d, s, decay=StepDecay.from_bands(scale_bands(E2SFCA_BANDS, 40.0)), **k
    ),
    "3sfca": lambda d, s, **k: three_stage_fca(
        d, s, decay=StepDecay.from_bands(scale_bands(THREE_SFCA_BANDS, 60.0)), **k
    ),
    "gravity": lambda d, s, **k: gravity_model(d, s, decay=GravityDecay(1.0, -1.5, 1.0), **k),
    "gaussian": lambda d, s, **k: two_stage_fca(d, s, decay=GaussianDecay(15.0), **k),
}


@pytest.mark.parametrize("measure", sorted(MEASURES))
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_supply_is_conserved(measure: str, seed: int) -> None:
    # Σ_i P_i A_i = Σ_j S_j over the facilities whose catchment holds some demand (every
    # facility's supply is shared out in full among the people who reach it).
    demand, supply = _random_instance(seed)
    result = MEASURES[measure](demand, supply)
    served = result.catchment_demand > 0
    assert float(demand.weight @ result.score) == pytest.approx(
        float(supply.capacity[served].sum()), rel=1e-9, abs=1e-9
    )


@pytest.mark.parametrize("measure", [*sorted(MEASURES), "hansen"])
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), extra=st.floats(0.5, 100.0), which=st.integers(0, 8))
def test_more_capacity_never_lowers_access(
    measure: str, seed: int, extra: float, which: int
) -> None:
    demand, supply = _random_instance(seed)
    more = np.array(supply.capacity)
    more[which] += extra
    bigger = Supply.build(supply.ids, supply.lat, supply.lon, more)
    run = MEASURES.get(measure) or (
        lambda d, s, **k: weighted_catchment(d, s, decay=GravityDecay(1.0, -1.0, 1.0), **k)
    )
    before, after = run(demand, supply).score, run(demand, bigger).score
    assert np.all(after >= before - 1e-15 * np.abs(before))
    assert np.any(after > before) or not np.any(before > 0) or np.all(after == before)


@pytest.mark.parametrize("measure", sorted(MEASURES))
def test_blocks_do_not_change_results(measure: str) -> None:
    demand, supply = _random_instance(5, n=203, m=17)
    whole = MEASURES[measure](demand, supply)
    for block_elements in (1, 17 * 5, 17 * 64 + 3):
        part = MEASURES[measure](demand, supply, block_elements=block_elements)
        assert np.allclose(part.score, whole.score, rtol=1e-12, atol=0)
        assert np.allclose(part.catchment_demand, whole.catchment_demand, rtol=1e-12, atol=0)


def test_great_circle_and_table_of_its_distances_agree() -> None:
    # The band tests on squared chords (no trigonometry) equal the tests on km.
    demand, supply = _random_instance(9, n=120, m=11)
    table = CostTable(great_circle(demand, supply).block(0, len(demand)))
    for measure in MEASURES.values():
        on_sphere = measure(demand, supply).score
        on_table = measure(demand, supply, cost=table).score
        assert np.allclose(on_sphere, on_table, rtol=1e-12, atol=0)
    for decay in (Uniform(), StepDecay.from_bands({20.0: 1.0, 40.0: 0.5})):
        assert np.allclose(
            two_stage_fca(demand, supply, max_cost=35.0, decay=decay).score,
            two_stage_fca(demand, supply, table, max_cost=35.0, decay=decay).score,
            rtol=1e-12,
            atol=0,
        )


def test_normalize_makes_the_population_weighted_mean_one() -> None:
    demand, supply = _random_instance(3)
    for measure in MEASURES.values():
        score = measure(demand, supply, normalize=True).score
        assert float(demand.weight @ score / demand.weight.sum()) == pytest.approx(1.0, rel=1e-12)


def test_rank_areas_lowest_access_first() -> None:
    demand = Demand.build(
        ["p1", "p2", "p3", "p4"],
        [0.0] * 4,
        [0.0] * 4,
        [10.0, 30.0, 20.0, 5.0],
        area=["north", "north", "south", "east"],
    )
    score = np.array([1.0, 3.0, 0.5, 4.0])
    nearest = np.array([2.0, 4.0, 12.0, np.inf])
    areas = rank_areas(demand, score, nearest, "2sfca", beyond=10.0)
    assert [a.area for a in areas] == ["south", "north", "east"]
    north = areas[1]
    assert north.score == pytest.approx((10 * 1 + 30 * 3) / 40)
    assert north.nearest_mean == pytest.approx((10 * 2 + 30 * 4) / 40)
    assert north.population == 40.0 and north.points == 2 and north.share_beyond == 0.0
    assert areas[0].share_beyond == 1.0
    # An unreachable point counts as beyond and its area's farthest distance is inf.
    assert areas[2].share_beyond == 1.0 and math.isinf(areas[2].nearest_max)
    # By distance, an area no facility reaches at all is the worst.
    by_distance = rank_areas(demand, nearest, nearest, "nearest", higher_is_better=False)
    assert [a.area for a in by_distance] == ["east", "south", "north"]


def test_compute_access_fits_bands_to_the_radius() -> None:
    demand, supply = _random_instance(4)
    report = compute_access(demand, supply, "e2sfca", radius=30.0)
    assert report.parameters["bands"] == {10.0: 1.0, 20.0: 0.68, 30.0: 0.22}
    assert [a.rank for a in report.areas] == list(range(1, 8))
    scores = [a.score for a in report.areas]
    assert scores == sorted(scores)
    nearest = compute_access(demand, supply, "nearest", radius=30.0)
    distances = [a.nearest_mean for a in nearest.areas]
    assert distances == sorted(distances, reverse=True)
    with pytest.raises(AccessInputError):
        compute_access(demand, supply, "2sfca", radius=0.0)
    with pytest.raises(AccessInputError, match="no facilities"):
        compute_access(demand, Supply.build([], [], []), "2sfca")


def test_aggregate_to_areas_centroid_and_population() -> None:
    demand = Demand.build(
        ["a", "b", "c"], [10.0, 12.0, 40.0], [50.0, 50.0, 20.0], [1.0, 3.0, 5.0], ["n", "n", "s"]
    )
    areas = aggregate_to_areas(demand)
    assert areas.ids.tolist() == ["n", "s"]
    assert areas.weight.tolist() == [4.0, 5.0]
    assert 11.4 < areas.lat[0] < 11.6 and areas.lon[0] == pytest.approx(50.0)


# -- cost tables -------------------------------------------------------------------------------


def test_cost_table_from_csv(tmp_path: Path) -> None:
    path = tmp_path / "road.csv"
    path.write_text(
        "origin,destination,cost\nA,X,5\nB,X,8\nB,Y,9\nC,Y,4\nZ,X,1\nA,Q,3\n", encoding="utf-8"
    )
    table = CostTable.from_csv(path, ["A", "B", "C"], ["X", "Y"])
    assert table.unmatched_rows == 2
    assert table.matrix.tolist() == [[5.0, np.inf], [8.0, 9.0], [np.inf, 4.0]]
    demand, supply, _ = _toy()
    by_hand = two_stage_fca(demand, supply, CostTable(TOY_COST), max_cost=10.0)
    # Pairs beyond the catchment may be left out of the table: the result is the same.
    assert np.allclose(two_stage_fca(demand, supply, table, max_cost=10.0).score, by_hand.score)

    path.write_text("origin,destination,cost\nA,X,5\nA,X,6\n", encoding="utf-8")
    with pytest.raises(AccessInputError, match="twice"):
        CostTable.from_csv(path, ["A"], ["X"])
    path.write_text("origin,destination,cost\nA,X,-1\n", encoding="utf-8")
    with pytest.raises(AccessInputError, match="non-negative"):
        CostTable.from_csv(path, ["A"], ["X"])
    path.write_text("origin,destination,cost\nA,X,soon\n", encoding="utf-8")
    with pytest.raises(AccessInputError, match="not a number"):
        CostTable.from_csv(path, ["A"], ["X"])
    path.write_text("from,to,minutes\nA,X,1\n", encoding="utf-8")
    with pytest.raises(AccessInputError, match="missing column"):
        CostTable.from_csv(path, ["A"], ["X"])


# -- cross-check against PySAL access ----------------------------------------------------------


def _grid() -> tuple[Demand, Supply, np.ndarray]:
    """30 demand points on a 6 × 5 grid (~5.5 km apart) near Riyadh, 8 clinics."""
    rng = np.random.default_rng(2024)
    lat, lon = np.meshgrid(24.5 + 0.05 * np.arange(6), 46.5 + 0.05 * np.arange(5), indexing="ij")
    demand = Demand.build(
        [f"d{i:02d}" for i in range(30)],
        lat.ravel(),
        lon.ravel(),
        rng.integers(100, 5000, 30),
    )
    supply = Supply.build(
        [f"s{j}" for j in range(8)],
        rng.uniform(24.5, 24.75, 8),
        rng.uniform(46.5, 46.7, 8),
        [3, 12, 7, 1, 20, 5, 9, 15],
    )
    return demand, supply, great_circle(demand, supply).block(0, 30)


@pytest.fixture(scope="module")
def pysal() -> Iterator[dict[str, Any]]:
    # a dev dependency (access==1.1.10.post3): the cross-check always runs, never skips
    import access
    import pandas as pd

    demand, supply, km = _grid()
    cost = pd.DataFrame(
        [(demand.ids[i], supply.ids[j], km[i, j]) for i in range(30) for j in range(8)],
        columns=["origin", "dest", "cost"],
    )
    neighbour_km = GreatCircle(demand.lat, demand.lon, demand.lat, demand.lon).block(0, 30)
    neighbours = pd.DataFrame(
        [(demand.ids[i], demand.ids[k], neighbour_km[i, k]) for i in range(30) for k in range(30)],
        columns=["origin", "dest", "cost"],
    )
    frames = {
        "demand_df": pd.DataFrame({"geoid": demand.ids, "pop": demand.weight}),
        "supply_df": pd.DataFrame({"geoid": supply.ids, "doc": supply.capacity}),
    }

    def model() -> Any:
        return access.Access(
            demand_index="geoid",
            demand_value="pop",
            supply_index="geoid",
            supply_value="doc",
            cost_df=cost,
            cost_origin="origin",
            cost_dest="dest",
            cost_name="cost",
            neighbor_cost_df=neighbours,
            neighbor_cost_origin="origin",
            neighbor_cost_dest="dest",
            neighbor_cost_name="cost",
            **{k: v.copy() for k, v in frames.items()},
        )

    def column(frame: Any) -> np.ndarray:
        # access leaves a place reached by no facility NaN; Takamul scores it 0.
        return np.nan_to_num(frame.iloc[:, 0].reindex(list(demand.ids)).to_numpy(dtype=float))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield {
            "module": access,
            "model": model,
            "column": column,
            "demand": demand,
            "supply": supply,
        }


def _max_rel(ours: np.ndarray, theirs: np.ndarray) -> float:
    assert ours.shape == theirs.shape
    assert np.array_equal(ours == 0, theirs == 0)
    nonzero = theirs != 0
    return float(np.max(np.abs(ours[nonzero] - theirs[nonzero]) / np.abs(theirs[nonzero])))


@pytest.mark.parametrize("normalize", [False, True])
def test_matches_pysal_two_stage_fca(pysal: dict[str, Any], normalize: bool) -> None:
    theirs = pysal["column"](pysal["model"]().two_stage_fca(max_cost=8.0, normalize=normalize))
    ours = two_stage_fca(pysal["demand"], pysal["supply"], max_cost=8.0, normalize=normalize)
    assert np.count_nonzero(theirs == 0) > 0  # some grid points lie beyond every catchment
    rel = _max_rel(ours.score, theirs)
    assert rel < 1e-9


@pytest.mark.parametrize("bands", [None, {4.0: 1.0, 8.0: 0.68, 12.0: 0.22}])
def test_matches_pysal_enhanced_two_stage_fca(
    pysal: dict[str, Any], bands: dict[float, float] | None
) -> None:
    weights = pysal["module"].weights
    fn = None if bands is None else weights.step_fn(bands)
    theirs = pysal["column"](pysal["model"]().enhanced_two_stage_fca(weight_fn=fn))
    decay = None if bands is None else StepDecay.from_bands(bands)
    ours = enhanced_two_stage_fca(pysal["demand"], pysal["supply"], decay=decay)
    rel = _max_rel(ours.score, theirs)
    assert rel < 1e-9


@pytest.mark.parametrize(
    ("bands", "max_cost"),
    [(None, None), ({3.0: 0.962, 6.0: 0.704, 9.0: 0.377, 18.0: 0.042}, None), (None, 60.0)],
)
def test_matches_pysal_three_stage_fca(
    pysal: dict[str, Any], bands: dict[float, float] | None, max_cost: float | None
) -> None:
    weights = pysal["module"].weights
    fn = None if bands is None else weights.step_fn(bands)
    theirs = pysal["column"](pysal["model"]().three_stage_fca(weight_fn=fn, max_cost=max_cost))
    decay = None if bands is None else StepDecay.from_bands(bands)
    ours = three_stage_fca(pysal["demand"], pysal["supply"], decay=decay, max_cost=max_cost)
    rel = _max_rel(ours.score, theirs)
    assert rel < 1e-9


@pytest.mark.parametrize(
    ("scale", "alpha", "min_dist"), [(1.0, -1.0, 1.0), (2.0, -1.5, 0.5), (10.0, -2.0, 2.0)]
)
def test_matches_pysal_gravity(
    pysal: dict[str, Any], scale: float, alpha: float, min_dist: float
) -> None:
    fn = pysal["module"].weights.gravity(scale=scale, alpha=alpha, min_dist=min_dist)
    decay = GravityDecay(scale, alpha, min_dist)
    # Joseph & Bantock = access's two-stage FCA with a gravity weight and no cut-off.
    theirs = pysal["column"](pysal["model"]().two_stage_fca(name="gravity", weight_fn=fn))
    ours = gravity_model(pysal["demand"], pysal["supply"], decay=decay)
    rel = _max_rel(ours.score, theirs)
    assert rel < 1e-9
    # Hansen = access's weighted catchment with the same weight.
    theirs = pysal["column"](pysal["model"]().weighted_catchment(name="hansen", weight_fn=fn))
    ours = weighted_catchment(pysal["demand"], pysal["supply"], decay=decay)
    rel = _max_rel(ours.score, theirs)
    assert rel < 1e-9


@pytest.mark.filterwarnings("ignore:some tracts may be unaccounted for:UserWarning")
def test_matches_pysal_gaussian_and_fca_ratio(pysal: dict[str, Any]) -> None:
    fn = pysal["module"].weights.gaussian(5.0)
    theirs = pysal["column"](pysal["model"]().two_stage_fca(name="g", weight_fn=fn, max_cost=10))
    ours = two_stage_fca(pysal["demand"], pysal["supply"], decay=GaussianDecay(5.0), max_cost=10)
    rel = _max_rel(ours.score, theirs)
    assert rel < 1e-9
    theirs = pysal["column"](pysal["model"]().fca_ratio(max_cost=6.0))
    ours = fca_ratio(pysal["demand"], pysal["supply"], 6.0)
    rel = _max_rel(ours.score, theirs)
    assert rel < 1e-9


def test_three_stage_selection_weights_differ_from_pysal_only_when_cut(
    pysal: dict[str, Any],
) -> None:
    # With max_cost inside the decay's support, Wan et al. normalise G within the catchment and
    # access over its whole cost table: a documented difference, so this pins which is which.
    theirs = pysal["column"](pysal["model"]().three_stage_fca(max_cost=8.0))
    ours = three_stage_fca(pysal["demand"], pysal["supply"], max_cost=8.0).score
    assert not np.allclose(ours, theirs, rtol=1e-6)


# -- the shared record: synthetic Patients and Locations --------------------------------------


@pytest.fixture(scope="module")
def synth_sa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("access-synth")
    generate(load_config(country="SA", patients=3000, seed=7), out)
    return out


def _links(folder: Path) -> dict[str, str]:
    with (folder / "truth" / "links.csv").open(encoding="utf-8", newline="") as handle:
        return {row["patient_id"]: row["person"] for row in csv.DictReader(handle)}


def _truth(folder: Path) -> list[dict[str, str]]:
    with (folder / "truth" / "persons.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_load_fhir_counts_persons_and_facilities(synth_sa: Path) -> None:
    truth = _truth(synth_sa)
    demand, supply, stats = load_fhir([synth_sa], location_types={"PC"}, person_of=_links(synth_sa))
    assert stats.persons == len(truth) == int(demand.weight.sum())
    assert stats.patients_without_position == 0
    assert stats.patient_records > len(truth)  # people are registered at several facilities
    home_facilities = {row["home_facility"] for row in truth}
    assert {i.removeprefix("loc-") for i in supply.ids} >= home_facilities
    assert set(supply.attributes["type"]) == {"PC"}
    assert np.all(supply.capacity > 1)  # read from the capacity extension
    # Without links, a person's records are merged by home, birth date and sex: within 10%.
    demand_h, _, stats_h = load_fhir([synth_sa], location_types={"PC"})
    assert len(truth) <= stats_h.persons <= 1.1 * len(truth)
    assert set(demand_h.area) == set(demand.area)
    # Region Locations (mode kind) are never facilities.
    _, every, _ = load_fhir([synth_sa / "Location.ndjson"])
    assert not any(str(i).startswith("region-") for i in every.ids)


def test_rural_travel_is_recovered(synth_sa: Path) -> None:
    """Nearest primary care centre: rural people travel ~3.6× farther, as the generator set."""
    demand, supply, _ = load_fhir([synth_sa], location_types={"PC"}, person_of=_links(synth_sa))
    _, km = nearest_facility(demand, supply)
    truth = _truth(synth_sa)
    remote_region = {row["region_code"]: row["remote"] == "1" for row in truth}
    effects = json.loads((synth_sa / "truth" / "effects.json").read_text(encoding="utf-8"))
    travel = effects["config"]["inequities"]["travel"]

    ours: dict[tuple[str, bool], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for ur, code, w, d in zip(
        demand.attributes["urban_rural"],
        demand.attributes["region_code"],
        demand.weight,
        km,
        strict=True,
    ):
        cell = ours[(str(ur), remote_region[str(code)])]
        cell[0] += w * d
        cell[1] += w
    true_km: dict[tuple[str, bool], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for row in truth:
        cell = true_km[("urban" if row["urban"] == "1" else "rural", row["remote"] == "1")]
        cell[0] += float(row["travel_km"])
        cell[1] += 1

    def mean(table: dict[tuple[str, bool], list[float]], ur: str, remote: bool | None) -> float:
        cells = [v for (u, r), v in table.items() if u == ur and remote in (None, r)]
        return sum(c[0] for c in cells) / sum(c[1] for c in cells)

    urban, rural = mean(ours, "urban", None), mean(ours, "rural", None)
    assert rural > 2.5 * urban
    for ur in ("urban", "rural"):
        # The nearest centre is the home centre for nearly everyone: within 5% of the truth.
        assert mean(ours, ur, None) == pytest.approx(mean(true_km, ur, None), rel=0.05)
        assert mean(ours, ur, None) <= mean(true_km, ur, None) + 1e-9
    # Against the configured means (gamma, so the sample mean varies): 15% urban, 25% rural.
    assert mean(ours, "urban", False) == pytest.approx(travel["urban_km"], rel=0.15)
    assert mean(ours, "rural", False) == pytest.approx(travel["rural_km"], rel=0.25)
    assert mean(ours, "rural", True) == pytest.approx(
        travel["rural_km"] * travel["remote_factor"], rel=0.25
    )


def test_fhir_readers_on_hand_made_resources(tmp_path: Path) -> None:
    geo = "http://hl7.org/fhir/StructureDefinition/geolocation"
    sd = "https://takamul.health/fhir/StructureDefinition/"

    def patient(pid: str, lat: float | None, state: str, birth: str) -> dict[str, Any]:
        address: dict[str, Any] = {"state": state}
        if lat is not None:
            address["extension"] = [
                {
                    "url": geo,
                    "extension": [
                        {"url": "latitude", "valueDecimal": lat},
                        {"url": "longitude", "valueDecimal": 46.7},
                    ],
                }
            ]
        return {
            "resourceType": "Patient",
            "id": pid,
            "birthDate": birth,
            "gender": "female",
            "extension": [{"url": sd + "urban-rural", "valueCode": "rural"}],
            "address": [address],
        }

    patients = [
        patient("p1", 24.7, "Riyadh", "1980-01-01"),
        patient("p1-dup", 24.7, "Riyadh", "1980-01-01"),  # the same person, another record
        patient("p2", 24.7, "Riyadh", "2010-05-05"),  # same home, another person
        patient("p3", None, "Riyadh", "1990-01-01"),  # no position
        patient("p4", 21.5, "Makkah", "1970-01-01"),
    ]
    demand, stats = demand_from_patients(patients, area_by="state")
    assert stats.patient_records == 5 and stats.patients_without_position == 1
    assert stats.persons == 3
    assert sorted(zip(demand.area.tolist(), demand.weight.tolist(), strict=True)) == [
        ("Makkah", 1.0),
        ("Riyadh", 2.0),
    ]
    assert set(demand.attributes["urban_rural"]) == {"rural"}

    locations: list[dict[str, Any]] = [
        {"resourceType": "Location", "id": "region-01", "mode": "kind", "position": {}},
        {
            "resourceType": "Location",
            "id": "loc-a",
            "mode": "instance",
            "position": {"latitude": 24.7, "longitude": 46.7},
            "extension": [{"url": sd + "capacity", "valueInteger": 40}],
            "type": [{"coding": [{"code": "PC"}]}],
        },
        {
            "resourceType": "Location",
            "id": "loc-b",
            "position": {"latitude": 21.5, "longitude": 39.2},
            "type": [{"coding": [{"code": "GACH"}]}],
        },
        {"resourceType": "Location", "id": "loc-c", "type": [{"coding": [{"code": "PC"}]}]},
        {
            "resourceType": "Location",
            "id": "loc-d",
            "status": "inactive",
            "position": {"latitude": 21.5, "longitude": 39.2},
        },
    ]
    supply, lstats = supply_from_locations(locations)
    assert supply.ids.tolist() == ["loc-a", "loc-b"]
    assert supply.capacity.tolist() == [40.0, 1.0]  # no capacity extension: 1
    assert lstats.locations == 2 and lstats.locations_skipped == 3
    only_pc, _ = supply_from_locations(locations, types={"PC"})
    assert only_pc.ids.tolist() == ["loc-a"]

    # The same resources through NDJSON files; other types in a named file are skipped.
    path = tmp_path / "mixed.ndjson"
    lines = [json.dumps(r) for r in [*patients, *locations, {"resourceType": "Encounter"}]]
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    d2, s2, _ = load_fhir([path], area_by="state")
    assert d2.weight.sum() == 3 and s2.ids.tolist() == ["loc-a", "loc-b"]
    path.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(AccessInputError, match="not JSON"):
        load_fhir([path])


# -- the command line --------------------------------------------------------------------------


def _cli() -> typer.Typer:
    # Registered as the lead will: ``app.add_typer(access_app)`` gives ``takamul access``.
    app = typer.Typer()

    @app.command()
    def version() -> None:  # a second command, so ``access`` stays a sub-command
        """Version."""

    app.add_typer(access_app)
    return app


def test_cli_ranks_areas_and_writes_csv(synth_sa: Path, tmp_path: Path) -> None:
    out = tmp_path / "areas.csv"
    result = CliRunner().invoke(
        _cli(),
        [
            *("access", "--input", str(synth_sa), "--method", "e2sfca", "-t", "PC"),
            *("--radius-km", "15", "--out", str(out), "--top", "5"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Most underserved areas" in result.output
    with out.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 13  # Saudi Arabia's 13 regions
    assert [int(r["rank"]) for r in rows] == list(range(1, 14))
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores)
    assert {r["method"] for r in rows} == {"e2sfca"}

    for method in ("2sfca", "3sfca", "gravity", "hansen", "nearest"):
        result = CliRunner().invoke(
            _cli(), ["access", "-i", str(synth_sa), "-m", method, "-t", "PC", "--normalize"]
        )
        assert result.exit_code == 0, (method, result.output)


def test_cli_cost_table(synth_sa: Path, tmp_path: Path) -> None:
    demand, supply, _ = load_fhir([synth_sa], location_types={"PC"})
    areas = aggregate_to_areas(demand)
    km = great_circle(areas, supply).block(0, len(areas))
    table = tmp_path / "minutes.csv"
    with table.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["origin", "destination", "cost"])
        for i, area in enumerate(areas.ids):
            for j, loc in enumerate(supply.ids):
                writer.writerow([area, loc, km[i, j] * 1.2])  # "minutes" at 50 km/h
    out = tmp_path / "areas.csv"
    result = CliRunner().invoke(
        _cli(),
        [
            *("access", "-i", str(synth_sa), "-t", "PC", "--cost-table", str(table)),
            *("--radius-km", "60", "--out", str(out)),
        ],
    )
    assert result.exit_code == 0, result.output
    with out.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 13 and all(r["points"] == "1" for r in rows)
    assert rows[0]["cost_unit"] == "cost table minutes.csv"


def test_cli_errors_exit_2(synth_sa: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    cases = [
        ["access", "-i", str(tmp_path / "missing")],
        ["access", "-i", str(synth_sa), "-t", "NO-SUCH-TYPE"],
        ["access", "-i", str(synth_sa), "--radius-km", "-1"],
        ["access", "-i", str(synth_sa), "-m", "4sfca"],
        ["access", "-i", str(synth_sa / "Organization.ndjson")],
    ]
    bad_table = tmp_path / "bad.csv"
    bad_table.write_text("a,b\n1,2\n", encoding="utf-8")
    cases.append(["access", "-i", str(synth_sa), "-t", "PC", "--cost-table", str(bad_table)])
    for args in cases:
        result = runner.invoke(_cli(), args)
        assert result.exit_code == 2, (args, result.output)


def test_decay_protocol_accepts_a_user_function() -> None:
    demand, supply, cost = _toy()

    class Linear:
        def __call__(self, c: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
            return np.clip(1.0 - c / 20.0, 0.0, None)

    decay: Decay = Linear()
    result = two_stage_fca(demand, supply, cost, decay=decay)
    assert float(demand.weight @ result.score) == pytest.approx(16.0)

    class Negative:
        def __call__(self, c: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
            return -np.ones_like(c)

    with pytest.raises(AccessInputError, match="negative"):
        two_stage_fca(demand, supply, cost, decay=Negative())
