"""Spatial access to care: nearest-facility distance and the floating-catchment family.

Demand (people or areas: a position, a weight such as population, an area) and supply
(facilities: a position and a capacity such as doctors or beds) are plain numpy arrays in
:class:`Demand` and :class:`Supply`. The cost between them is a great-circle distance in km
(:class:`takamul.equity.geo.GreatCircle`, the default) or a user's table such as road travel time
(:class:`CostTable`, from a CSV of ``origin, destination, cost``). The people × facilities matrix
is never held whole: every measure walks it in blocks of rows, so 1,000,000 people × 1,000
facilities runs in a bounded ~100 MB.

The measures follow the definitions of PySAL's ``access`` package (Saxon, Koschinsky, Acosta,
Anguiano, Anselin, Rey: *An open software environment to make spatial access metrics more
accessible*, J Comput Soc Sci 2022; doi:10.1007/s42001-021-00126-8) so results can be compared
with it, and are written here from the published formulas (no code of ``access`` is used):

* :func:`two_stage_fca` — 2SFCA, Luo W, Wang F. *Measures of spatial accessibility to health care
  in a GIS environment: synthesis and a case study in the Chicago region*. Environ Plann B
  2003;30(6):865-884, doi:10.1068/b29120.
* :func:`enhanced_two_stage_fca` — E2SFCA, Luo W, Qi Y. *An enhanced two-step floating catchment
  area (E2SFCA) method for measuring spatial accessibility to primary care physicians*. Health
  Place 2009;15(4):1100-1107, doi:10.1016/j.healthplace.2009.06.002.
* :func:`three_stage_fca` — 3SFCA, Wan N, Zou B, Sternberg T. *A three-step floating catchment
  area method for analyzing spatial access to health services*. Int J Geogr Inf Sci
  2012;26(6):1073-1089, doi:10.1080/13658816.2011.624987.
* :func:`gravity_model` — Joseph AE, Bantock PR. *Measuring potential physical accessibility to
  general practitioners in rural areas: a method and case study*. Soc Sci Med 1982;16(1):85-90,
  doi:10.1016/0277-9536(82)90428-2 (supply discounted by the competing demand).
* :func:`weighted_catchment` — Hansen WG. *How accessibility shapes land use*. J Am Inst Plann
  1959;25(2):73-76, doi:10.1080/01944365908978307 (the potential model, no competition).
* :func:`fca_ratio` — the floating catchment ratio of supply to demand within reach of each place
  (Peng Z. *The jobs-housing balance and urban commuting*. Urban Stud 1997;34(8):1215-1235;
  ``access.Access.fca_ratio``).

Decay functions mirror ``access.weights``: :class:`StepDecay` (``step_fn``),
:class:`GaussianDecay` (``gaussian``) and :class:`GravityDecay` (``gravity``). ``normalize``
divides scores by their population-weighted mean, as ``access``'s ``normalize=True``.

Where ``access`` differs (documented in ``docs/equity-access.md``): a demand point reached by no
facility scores 0 here (``access`` leaves it NaN); 3SFCA selection weights are normalised within
the catchment (``max_cost``) as in Wan et al. (``access`` normalises over every destination in its
cost table; the two agree whenever ``max_cost`` does not cut the decay function's support); and
RAAM (Saxon & Snow 2020), an iterative optimisation, is not implemented.
"""

from __future__ import annotations

import csv
import gzip
import math
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import numpy as np
import numpy.typing as npt
import orjson

from takamul.equity.geo import DEFAULT_BLOCK_ELEMENTS, GreatCircle, row_blocks, unit_vectors

__all__ = [
    "E2SFCA_BANDS",
    "GEOLOCATION_URL",
    "METHODS",
    "TAKAMUL_SD",
    "THREE_SFCA_BANDS",
    "AccessInputError",
    "AccessReport",
    "AreaAccess",
    "CostModel",
    "CostTable",
    "Decay",
    "Demand",
    "FcaResult",
    "GaussianDecay",
    "GravityDecay",
    "LoadStats",
    "Method",
    "StepDecay",
    "Supply",
    "Uniform",
    "aggregate_to_areas",
    "compute_access",
    "demand_from_patients",
    "enhanced_two_stage_fca",
    "fca_ratio",
    "gravity_model",
    "great_circle",
    "load_fhir",
    "nearest_facility",
    "normalize_scores",
    "rank_areas",
    "read_resources",
    "scale_bands",
    "supply_from_locations",
    "three_stage_fca",
    "two_stage_fca",
    "weighted_catchment",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
ObjectArray = npt.NDArray[np.object_]

Method = Literal["2sfca", "e2sfca", "3sfca", "gravity", "hansen", "nearest"]
METHODS: tuple[Method, ...] = get_args(Method)

# Luo & Qi (2009): travel-time zones 0-10, 10-20, 20-30 minutes weighted 1, 0.68, 0.22 (the
# paper's Gaussian-derived weights); the default of ``access.Access.enhanced_two_stage_fca``.
E2SFCA_BANDS: Mapping[float, float] = {10.0: 1.0, 20.0: 0.68, 30.0: 0.22}
# Wan, Zou & Sternberg (2012): zones 0-10, 10-20, 20-30, 30-60 minutes weighted 0.962, 0.704,
# 0.377, 0.042 (a Gaussian read at the zone centres 5, 15, 25, 45 min); ``access``'s 3SFCA default.
THREE_SFCA_BANDS: Mapping[float, float] = {10.0: 0.962, 20.0: 0.704, 30.0: 0.377, 60.0: 0.042}

GEOLOCATION_URL = "http://hl7.org/fhir/StructureDefinition/geolocation"
TAKAMUL_SD = "https://takamul.health/fhir/StructureDefinition/"


class AccessInputError(ValueError):
    """Input that cannot be used: no facilities, no positions, an unreadable cost table."""


# -- inputs ------------------------------------------------------------------------------------


def _float_array(values: npt.ArrayLike, name: str, n: int | None = None) -> FloatArray:
    array = np.ascontiguousarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise AccessInputError(f"{name} must be one-dimensional")
    if n is not None and array.shape[0] != n:
        raise AccessInputError(f"{name} has {array.shape[0]} values, expected {n}")
    if not np.all(np.isfinite(array)):
        raise AccessInputError(f"{name} has a missing or infinite value")
    return array


def _object_array(values: Iterable[Any], name: str, n: int) -> ObjectArray:
    array = np.empty(n, dtype=object)
    items = list(values)
    if len(items) != n:
        raise AccessInputError(f"{name} has {len(items)} values, expected {n}")
    array[:] = [str(v) for v in items]
    return array


@dataclass(frozen=True)
class Demand:
    """Where the demand is: people or areas, each with a weight (population) and an area.

    Build with :meth:`build`, which converts and checks the arrays. ``attributes`` holds any
    further per-point columns (e.g. ``urban_rural``) carried into the results.
    """

    ids: ObjectArray
    lat: FloatArray
    lon: FloatArray
    weight: FloatArray
    area: ObjectArray
    attributes: Mapping[str, npt.NDArray[Any]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        ids: Iterable[Any],
        lat: npt.ArrayLike,
        lon: npt.ArrayLike,
        weight: npt.ArrayLike | None = None,
        area: Iterable[Any] | None = None,
        attributes: Mapping[str, Iterable[Any]] | None = None,
    ) -> Demand:
        """Demand points; ``weight`` defaults to 1 each (people), ``area`` to the point's id."""
        lat_a = _float_array(lat, "demand latitude")
        n = lat_a.shape[0]
        id_a = _object_array(ids, "demand ids", n)
        weight_a = _float_array(np.ones(n) if weight is None else weight, "demand weight", n)
        if np.any(weight_a < 0):
            raise AccessInputError("demand weight must not be negative")
        return cls(
            ids=id_a,
            lat=lat_a,
            lon=_float_array(lon, "demand longitude", n),
            weight=weight_a,
            area=id_a.copy() if area is None else _object_array(area, "demand area", n),
            attributes={k: np.asarray(list(v)) for k, v in (attributes or {}).items()},
        )

    def __len__(self) -> int:
        return int(self.lat.shape[0])


@dataclass(frozen=True)
class Supply:
    """Facilities: a position and a capacity (doctors, beds, registered-list size)."""

    ids: ObjectArray
    lat: FloatArray
    lon: FloatArray
    capacity: FloatArray
    attributes: Mapping[str, npt.NDArray[Any]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        ids: Iterable[Any],
        lat: npt.ArrayLike,
        lon: npt.ArrayLike,
        capacity: npt.ArrayLike | None = None,
        attributes: Mapping[str, Iterable[Any]] | None = None,
    ) -> Supply:
        """Facilities; ``capacity`` defaults to 1 each (a count of facilities)."""
        lat_a = _float_array(lat, "facility latitude")
        n = lat_a.shape[0]
        cap = _float_array(np.ones(n) if capacity is None else capacity, "facility capacity", n)
        if np.any(cap < 0):
            raise AccessInputError("facility capacity must not be negative")
        return cls(
            ids=_object_array(ids, "facility ids", n),
            lat=lat_a,
            lon=_float_array(lon, "facility longitude", n),
            capacity=cap,
            attributes={k: np.asarray(list(v)) for k, v in (attributes or {}).items()},
        )

    def __len__(self) -> int:
        return int(self.lat.shape[0])


# -- costs -------------------------------------------------------------------------------------


class CostModel(Protocol):
    """A demand × supply cost matrix read in bands of rows; ``inf`` means unreachable."""

    @property
    def shape(self) -> tuple[int, int]: ...

    def block(self, start: int, stop: int) -> FloatArray:
        """Costs of demand points ``start:stop`` to every facility (a fresh, writable array)."""
        ...

    def nearest(self, block_elements: int = ...) -> tuple[IntArray, FloatArray]:
        """Index of the cheapest facility (-1 if none reachable) and its cost, per demand point."""
        ...


class CostTable:
    """A dense demand × supply cost table (e.g. road travel time); missing pairs are unreachable.

    Meant for areas × facilities (10,000 × 1,000 is 80 MB); for people, use :class:`GreatCircle`.
    """

    def __init__(self, matrix: npt.ArrayLike) -> None:
        cost = np.array(matrix, dtype=np.float64)
        if cost.ndim != 2:
            raise AccessInputError("a cost table must be two-dimensional")
        if np.any(np.isnan(cost)) or np.any(cost < 0):
            raise AccessInputError("costs must be non-negative numbers (inf for unreachable)")
        self.matrix = cost
        self.unmatched_rows = 0

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.matrix.shape[0]), int(self.matrix.shape[1]))

    def block(self, start: int, stop: int) -> FloatArray:
        return self.matrix[start:stop].copy()

    def nearest(self, block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> tuple[IntArray, FloatArray]:
        if self.shape[1] == 0:
            raise AccessInputError("no facilities")
        index = np.argmin(self.matrix, axis=1).astype(np.intp)
        cost = self.matrix[np.arange(self.shape[0]), index]
        index[~np.isfinite(cost)] = -1
        return index, cost

    @classmethod
    def from_csv(
        cls,
        path: Path,
        demand_ids: Sequence[Any] | ObjectArray,
        supply_ids: Sequence[Any] | ObjectArray,
        *,
        origin: str = "origin",
        destination: str = "destination",
        cost: str = "cost",
    ) -> CostTable:
        """Read ``origin, destination, cost`` rows (origin = demand id, destination = facility id).

        Rows naming an unknown origin or destination are skipped and counted in
        ``unmatched_rows``; a pair given twice, or a cost that is not a non-negative number, is
        an error.
        """
        row_of = {str(v): i for i, v in enumerate(demand_ids)}
        col_of = {str(v): j for j, v in enumerate(supply_ids)}
        matrix = np.full((len(row_of), len(col_of)), np.inf)
        seen = np.zeros(matrix.shape, dtype=bool)
        unmatched = 0
        with _open_text(path) as handle:
            reader = csv.DictReader(handle)
            missing = {origin, destination, cost} - set(reader.fieldnames or [])
            if missing:
                raise AccessInputError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
            for line, row in enumerate(reader, start=2):
                i, j = row_of.get(row[origin] or ""), col_of.get(row[destination] or "")
                if i is None or j is None:
                    unmatched += 1
                    continue
                try:
                    value = float(row[cost])
                except (TypeError, ValueError):
                    raise AccessInputError(
                        f"{path}:{line}: cost {row[cost]!r} is not a number"
                    ) from None
                if math.isnan(value) or value < 0:
                    raise AccessInputError(f"{path}:{line}: cost must be a non-negative number")
                if seen[i, j]:
                    raise AccessInputError(
                        f"{path}:{line}: pair {row[origin]} → {row[destination]} given twice"
                    )
                seen[i, j] = True
                matrix[i, j] = value
        if not seen.any():
            raise AccessInputError(f"{path}: no row matches a demand point and a facility")
        table = cls(matrix)
        table.unmatched_rows = unmatched
        return table


def _open_binary(path: Path) -> Any:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def _open_text(path: Path) -> Any:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def great_circle(demand: Demand, supply: Supply) -> GreatCircle:
    """The default cost: great-circle km from each demand point to each facility."""
    return GreatCircle(demand.lat, demand.lon, supply.lat, supply.lon)


def _cost_for(demand: Demand, supply: Supply, cost: CostModel | None) -> CostModel:
    if len(supply) == 0:
        raise AccessInputError("no facilities")
    model: CostModel = great_circle(demand, supply) if cost is None else cost
    if model.shape != (len(demand), len(supply)):
        raise AccessInputError(
            f"cost matrix is {model.shape}, expected {(len(demand), len(supply))}"
        )
    return model


# -- distance decay ----------------------------------------------------------------------------


class Decay(Protocol):
    """Weight as a function of cost (``access.weights``-style), vectorised."""

    def __call__(self, cost: FloatArray, /) -> FloatArray: ...


@dataclass(frozen=True)
class Uniform:
    """Weight 1 at every cost: the plain catchment of 2SFCA (Luo & Wang 2003)."""

    def __call__(self, cost: FloatArray) -> FloatArray:
        return np.ones_like(cost)


@dataclass(frozen=True)
class StepDecay:
    """Stepwise weights by cost band, as ``access.weights.step_fn``.

    A cost up to and including ``thresholds[k]`` (and above ``thresholds[k-1]``) weighs
    ``weights[k]``; beyond the largest threshold the weight is 0. E2SFCA (Luo & Qi 2009) and
    3SFCA (Wan et al. 2012) use such bands.
    """

    thresholds: tuple[float, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.thresholds or len(self.thresholds) != len(self.weights):
            raise ValueError("step decay needs as many weights as thresholds, at least one")
        if any(b <= a for a, b in zip(self.thresholds, self.thresholds[1:], strict=False)):
            raise ValueError("step thresholds must increase")
        if any(w < 0 or not math.isfinite(w) for w in self.weights):
            raise ValueError("step weights must be finite and non-negative")

    @classmethod
    def from_bands(cls, bands: Mapping[float, float]) -> StepDecay:
        """From ``{threshold: weight}``, the form of ``access.weights.step_fn``."""
        items = sorted((float(k), float(v)) for k, v in bands.items())
        return cls(tuple(k for k, _ in items), tuple(v for _, v in items))

    def __call__(self, cost: FloatArray) -> FloatArray:
        table = np.append(np.asarray(self.weights, dtype=np.float64), 0.0)
        # side="left": the first threshold >= cost, so a cost equal to a threshold is inside it.
        return table[np.searchsorted(np.asarray(self.thresholds), cost, side="left")]


def scale_bands(bands: Mapping[float, float], largest: float) -> dict[float, float]:
    """The same bands stretched so the largest threshold is ``largest`` (e.g. minutes → km).

    ``scale_bands(E2SFCA_BANDS, 15.0)`` gives 5, 10 and 15 km zones weighted 1, 0.68, 0.22.
    """
    top = max(bands)
    return {k * largest / top: v for k, v in bands.items()}


@dataclass(frozen=True)
class GaussianDecay:
    """``exp(-cost² / (2 σ²))``, unnormalised: weight 1 at 0 (``access.weights.gaussian``)."""

    sigma: float

    def __post_init__(self) -> None:
        if self.sigma == 0 or not math.isfinite(self.sigma):
            raise ValueError("sigma must be finite and non-zero")

    def __call__(self, cost: FloatArray) -> FloatArray:
        return np.exp(-(cost * cost) / (2.0 * self.sigma**2))


@dataclass(frozen=True)
class GravityDecay:
    """``(max(cost, min_cost) / scale) ** alpha``, as ``access.weights.gravity``.

    ``alpha`` is the exponent itself (negative for decay: ``alpha = -β`` of Hansen 1959 and
    Joseph & Bantock 1982). ``min_cost`` caps the weight of very short trips, which would
    otherwise be infinite at cost 0.
    """

    scale: float = 1.0
    alpha: float = -1.0
    min_cost: float = 0.0

    def __post_init__(self) -> None:
        if self.scale <= 0 or not math.isfinite(self.scale):
            raise ValueError("gravity scale must be positive")
        if not math.isfinite(self.alpha) or self.min_cost < 0:
            raise ValueError("gravity alpha must be finite and min_cost non-negative")

    def __call__(self, cost: FloatArray) -> FloatArray:
        with np.errstate(divide="ignore", over="ignore"):
            return np.power(np.maximum(cost, self.min_cost) / self.scale, self.alpha)


# -- the floating-catchment engine -------------------------------------------------------------


@dataclass(frozen=True)
class FcaResult:
    """Scores per demand point, and per facility its catchment demand and supply ratio."""

    method: str
    score: FloatArray
    catchment_demand: FloatArray
    supply_ratio: FloatArray


def _threshold_weights(
    values: FloatArray,
    decay: Uniform | StepDecay,
    max_cost: float | None,
    to_values: Callable[[float], float],
) -> FloatArray:
    """Weights of a decay that depends only on which band a cost falls in.

    ``values`` increase with the cost and ``to_values`` maps a cost threshold onto them (the
    identity for a cost table, km → squared chord for great-circle distances), so no distance is
    computed. A cost equal to a threshold is inside it, as in ``access.weights.step_fn``.
    """
    if isinstance(decay, Uniform):
        if max_cost is None:
            # Everything reachable; unreachable pairs of a cost table are inf.
            return np.isfinite(values).astype(np.float64)
        return (values <= to_values(max_cost)).astype(np.float64)
    limits = np.array([to_values(t) for t in decay.thresholds])
    table = np.append(np.asarray(decay.weights, dtype=np.float64), 0.0)
    upper = limits[-1] if max_cost is None else min(limits[-1], to_values(max_cost))
    inside = values <= upper
    # side="left": the first threshold >= the value, so a cost equal to a threshold is in it.
    if np.count_nonzero(inside) * 8 < inside.size:
        # National-scale catchments are sparse (a few facilities within reach of each person):
        # looking up the bands of the pairs inside alone is ~6× faster than of every pair.
        w = np.zeros(values.shape)
        w[inside] = table[np.searchsorted(limits, values[inside], side="left")]
        return w
    w = table[np.searchsorted(limits, values, side="left")]
    np.copyto(w, 0.0, where=~inside)
    return w


def _decay_weights(cost: FloatArray, decay: Decay, max_cost: float | None) -> FloatArray:
    """Weights of any decay function of the cost; 0 beyond ``max_cost`` or where unreachable."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        w = np.array(decay(cost), dtype=np.float64)
    if w.shape != cost.shape:
        raise AccessInputError("the decay function must return one weight per cost")
    outside = cost > max_cost if max_cost is not None else ~np.isfinite(cost)
    np.copyto(w, 0.0, where=outside)
    # The built-in Gaussian is finite and non-negative everywhere, the gravity decay too except
    # at cost 0 without a floor; only then, or for a user's function, is the full check paid.
    trusted = isinstance(decay, GaussianDecay) or (
        isinstance(decay, GravityDecay) and (decay.min_cost > 0 or decay.alpha >= 0)
    )
    if not trusted and (not np.all(np.isfinite(w)) or np.any(w < 0)):
        raise AccessInputError(
            "the decay function gave an infinite or negative weight inside the catchment "
            "(a gravity decay at cost 0 needs min_cost > 0)"
        )
    return w


def _identity(value: float) -> float:
    return value


def _block_weights(
    model: CostModel, start: int, stop: int, decay: Decay, max_cost: float | None
) -> FloatArray:
    """Decay weights of demand points ``start:stop`` to every facility, 0 outside the catchment."""
    if isinstance(decay, Uniform | StepDecay):
        if isinstance(model, GreatCircle):
            return _threshold_weights(
                model.chord2_block(start, stop), decay, max_cost, model.km_to_chord2
            )
        return _threshold_weights(model.block(start, stop), decay, max_cost, _identity)
    return _decay_weights(model.block(start, stop), decay, max_cost)


def _catchment_block(
    model: CostModel,
    start: int,
    stop: int,
    decay: Decay,
    max_cost: float | None,
    selection: bool,
) -> FloatArray:
    w = _block_weights(model, start, stop, decay, max_cost)
    if selection:
        # Wan et al. (2012), step 1: G_ij = T_ij / Σ_k T_ik over the facilities k in i's catchment;
        # the block then carries G_ij × W_ij, used in both later steps (2 and 3).
        total = w.sum(axis=1, keepdims=True)
        g = np.divide(w, total, out=np.zeros_like(w), where=total > 0)
        w *= g
    return w


def _matvec(w: FloatArray, v: FloatArray) -> FloatArray:
    """w @ v by numpy's own loop (see GreatCircle._dots: faster than BLAS gemv here)."""
    return np.einsum("ij,j->i", w, v)


def _vecmat(v: FloatArray, w: FloatArray) -> FloatArray:
    """v @ w by numpy's own loop."""
    return np.einsum("i,ij->j", v, w)


def _floating_catchment(
    method: str,
    demand: Demand,
    supply: Supply,
    cost: CostModel | None,
    decay: Decay,
    max_cost: float | None,
    selection: bool,
    normalize: bool,
    block_elements: int,
) -> FcaResult:
    """Two passes over the cost matrix, block by block (the matrix is recomputed, not stored).

    Step 1: V_j = Σ_k P_k w_kj, R_j = S_j / V_j (0 where V_j = 0: nobody to serve).
    Step 2: A_i = Σ_j w_ij R_j. ``w`` is the decay weight inside the catchment (times the
    selection weight for 3SFCA) and 0 outside it.
    """
    model = _cost_for(demand, supply, cost)
    n, m = model.shape
    catchment_demand = np.zeros(m)
    for start, stop in row_blocks(n, m, block_elements):
        w = _catchment_block(model, start, stop, decay, max_cost, selection)
        catchment_demand += _vecmat(demand.weight[start:stop], w)
    ratio = np.divide(
        supply.capacity,
        catchment_demand,
        out=np.zeros(m),
        where=catchment_demand > 0,
    )
    score = np.empty(n)
    for start, stop in row_blocks(n, m, block_elements):
        w = _catchment_block(model, start, stop, decay, max_cost, selection)
        score[start:stop] = _matvec(w, ratio)
    if normalize:
        score = normalize_scores(score, demand.weight)
    return FcaResult(method, score, catchment_demand, ratio)


def normalize_scores(score: FloatArray, weight: FloatArray) -> FloatArray:
    """Scores divided by their population-weighted mean (``access``'s ``normalize=True``).

    1 is the national average; 0.5 is half of it.
    """
    total = float(weight.sum())
    mean = float(score @ weight) / total if total > 0 else 0.0
    if mean <= 0 or not math.isfinite(mean):
        raise AccessInputError("cannot normalise: the population-weighted mean access is 0")
    return np.asarray(score / mean)


def two_stage_fca(
    demand: Demand,
    supply: Supply,
    cost: CostModel | None = None,
    *,
    max_cost: float | None = None,
    decay: Decay | None = None,
    normalize: bool = False,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> FcaResult:
    """Two-step floating catchment area (2SFCA) access per demand point.

    Luo & Wang (2003), steps 1-2: for each facility j, R_j = S_j / Σ_{k: d_kj ≤ d0} P_k; for each
    demand point i, A_i = Σ_{j: d_ij ≤ d0} R_j. ``max_cost`` is the catchment d0 (``None``: every
    reachable pair). With a ``decay``, both sums are weighted by it (the generalised 2SFCA of
    ``access.Access.two_stage_fca(weight_fn=...)``). A_i is supply per unit of demand, e.g.
    doctors per person.
    """
    return _floating_catchment(
        "2sfca",
        demand,
        supply,
        cost,
        Uniform() if decay is None else decay,
        max_cost,
        False,
        normalize,
        block_elements,
    )


def enhanced_two_stage_fca(
    demand: Demand,
    supply: Supply,
    cost: CostModel | None = None,
    *,
    max_cost: float | None = None,
    decay: Decay | None = None,
    normalize: bool = False,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> FcaResult:
    """Enhanced 2SFCA (E2SFCA): 2SFCA with distance-decay weights by travel band.

    Luo & Qi (2009), steps 1-2: R_j = S_j / Σ_{r} Σ_{k ∈ D_r} P_k W_r and A_i = Σ_r Σ_{j ∈ D_r}
    R_j W_r, with bands D_r and weights W_r. The default decay is the paper's (and
    ``access``'s) ``{10: 1, 20: 0.68, 30: 0.22}`` in the cost's own unit; use
    :func:`scale_bands` to fit the bands to kilometres.
    """
    return _floating_catchment(
        "e2sfca",
        demand,
        supply,
        cost,
        StepDecay.from_bands(E2SFCA_BANDS) if decay is None else decay,
        max_cost,
        False,
        normalize,
        block_elements,
    )


def three_stage_fca(
    demand: Demand,
    supply: Supply,
    cost: CostModel | None = None,
    *,
    max_cost: float | None = None,
    decay: Decay | None = None,
    normalize: bool = False,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> FcaResult:
    """Three-step floating catchment area (3SFCA): E2SFCA with selection weights.

    Wan, Zou & Sternberg (2012): step 1, G_ij = T_ij / Σ_{k ∈ catchment(i)} T_ik, the share of
    i's demand that goes to j given the decay weights T of the facilities within reach; step 2,
    R_j = S_j / Σ_{k ∈ catchment(j)} G_kj P_k W_kj; step 3, A_i = Σ_{j ∈ catchment(i)} G_ij R_j
    W_ij. T and W are the same decay (as in the paper and ``access``); the default is the paper's
    ``{10: 0.962, 20: 0.704, 30: 0.377, 60: 0.042}`` in the cost's unit.
    """
    return _floating_catchment(
        "3sfca",
        demand,
        supply,
        cost,
        StepDecay.from_bands(THREE_SFCA_BANDS) if decay is None else decay,
        max_cost,
        True,
        normalize,
        block_elements,
    )


def gravity_model(
    demand: Demand,
    supply: Supply,
    cost: CostModel | None = None,
    *,
    decay: Decay | None = None,
    max_cost: float | None = None,
    normalize: bool = False,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> FcaResult:
    """Gravity-model access with competition for supply.

    Joseph & Bantock (1982): A_i = Σ_j S_j d_ij^-β / V_j with V_j = Σ_k P_k d_kj^-β, the demand
    competing for facility j. This is 2SFCA with a gravity decay and no catchment limit (Luo &
    Wang 2003 show 2SFCA is its special case), i.e. ``access.Access.two_stage_fca(
    weight_fn=access.weights.gravity(scale, alpha, min_dist))``. The default decay is
    :class:`GravityDecay` ``(scale=1, alpha=-1, min_cost=1)``: β = 1, trips under 1 cost unit
    weigh as 1.
    """
    return _floating_catchment(
        "gravity",
        demand,
        supply,
        cost,
        GravityDecay(1.0, -1.0, 1.0) if decay is None else decay,
        max_cost,
        False,
        normalize,
        block_elements,
    )


def weighted_catchment(
    demand: Demand,
    supply: Supply,
    cost: CostModel | None = None,
    *,
    decay: Decay | None = None,
    max_cost: float | None = None,
    normalize: bool = False,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> FcaResult:
    """Supply within reach, optionally decay-weighted: A_i = Σ_{j: d_ij ≤ d0} S_j f(d_ij).

    With a gravity decay this is Hansen's (1959) potential accessibility, without competition
    for supply (``access.Access.weighted_catchment``). ``catchment_demand`` and
    ``supply_ratio`` of the result are not defined here and are left as zeros and capacities.
    """
    model = _cost_for(demand, supply, cost)
    weight_fn = Uniform() if decay is None else decay
    n, m = model.shape
    score = np.empty(n)
    for start, stop in row_blocks(n, m, block_elements):
        w = _block_weights(model, start, stop, weight_fn, max_cost)
        score[start:stop] = _matvec(w, supply.capacity)
    if normalize:
        score = normalize_scores(score, demand.weight)
    return FcaResult("hansen", score, np.zeros(m), supply.capacity.copy())


def fca_ratio(
    demand: Demand,
    supply: Supply,
    max_cost: float,
    cost: CostModel | None = None,
    neighbor_cost: CostModel | None = None,
    *,
    normalize: bool = False,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> FcaResult:
    """Floating catchment ratio: supply within ``max_cost`` of i over demand within ``max_cost``.

    FCA_i = Σ_{j: d_ij ≤ d0} S_j / Σ_{k: d_ik ≤ d0} P_k (``access.Access.fca_ratio``; Peng 1997).
    ``neighbor_cost`` is the demand × demand cost (default great-circle), so this suits areas
    rather than millions of people (it is an n × n matrix, walked in blocks).
    """
    supply_cost = _cost_for(demand, supply, cost)
    if neighbor_cost is None:
        neighbor_cost = GreatCircle(demand.lat, demand.lon, demand.lat, demand.lon)
    n = len(demand)
    if neighbor_cost.shape != (n, n):
        raise AccessInputError(f"neighbour cost matrix is {neighbor_cost.shape}, expected {(n, n)}")
    within_supply = np.empty(n)
    for start, stop in row_blocks(n, len(supply), block_elements):
        w = _block_weights(supply_cost, start, stop, Uniform(), max_cost)
        within_supply[start:stop] = _matvec(w, supply.capacity)
    within_demand = np.empty(n)
    for start, stop in row_blocks(n, n, block_elements):
        w = _block_weights(neighbor_cost, start, stop, Uniform(), max_cost)
        within_demand[start:stop] = _matvec(w, demand.weight)
    score = np.divide(within_supply, within_demand, out=np.zeros(n), where=within_demand > 0)
    if normalize:
        score = normalize_scores(score, demand.weight)
    return FcaResult("fca", score, within_demand, within_supply)


def nearest_facility(
    demand: Demand,
    supply: Supply,
    cost: CostModel | None = None,
    *,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> tuple[IntArray, FloatArray]:
    """Index of the nearest facility (-1 if none reachable) and the cost to it, per demand point."""
    return _cost_for(demand, supply, cost).nearest(block_elements)


# -- areas and ranking -------------------------------------------------------------------------


@dataclass(frozen=True)
class AreaAccess:
    """One area's access: population-weighted means over its demand points, and its rank.

    ``rank`` 1 is the most underserved area (lowest access, or longest distance for ``nearest``).
    ``share_beyond`` is the share of the population whose nearest facility is farther than the
    threshold given to :func:`rank_areas` (NaN without one).
    """

    rank: int
    area: str
    method: str
    score: float
    population: float
    points: int
    nearest_mean: float
    nearest_max: float
    share_beyond: float


def _weighted_means(
    values: FloatArray, weight: FloatArray, inverse: IntArray, k: int
) -> FloatArray:
    """Per-group weighted mean of the non-NaN values; the plain mean where their weight is 0."""
    valid = ~np.isnan(values)
    v = np.where(valid, values, 0.0)
    w = np.where(valid, weight, 0.0)
    total = np.bincount(inverse, weights=w, minlength=k)
    count = np.bincount(inverse, weights=valid.astype(np.float64), minlength=k)
    weighted = np.bincount(inverse, weights=v * w, minlength=k)
    plain = np.bincount(inverse, weights=v, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, weighted / total, plain / count)


def rank_areas(
    demand: Demand,
    score: FloatArray,
    nearest_cost: FloatArray,
    method: str,
    *,
    higher_is_better: bool = True,
    beyond: float | None = None,
) -> list[AreaAccess]:
    """Per-area access, most underserved first.

    An area's score is the population-weighted mean of its points' scores (for the FCA family
    this is its supply per person), its distance the population-weighted mean nearest cost.
    Ties are broken by larger population first (more people affected), then by name.
    """
    if score.shape != demand.weight.shape or nearest_cost.shape != demand.weight.shape:
        raise AccessInputError("scores and distances must have one value per demand point")
    areas, inverse = np.unique(demand.area.astype(str), return_inverse=True)
    inverse = inverse.astype(np.intp)
    k = len(areas)
    population = np.bincount(inverse, weights=demand.weight, minlength=k)
    points = np.bincount(inverse, minlength=k)
    area_score = _weighted_means(score, demand.weight, inverse, k)
    finite = np.where(np.isfinite(nearest_cost), nearest_cost, np.nan)
    near_mean = _weighted_means(finite, demand.weight, inverse, k)
    near_max = np.full(k, -np.inf)
    np.maximum.at(near_max, inverse, np.where(np.isnan(finite), np.inf, finite))
    if beyond is None:
        share = np.full(k, np.nan)
    else:
        far = (~np.isfinite(nearest_cost)) | (nearest_cost > beyond)
        far_pop = np.bincount(inverse, weights=demand.weight * far, minlength=k)
        share = np.divide(far_pop, population, out=np.full(k, np.nan), where=population > 0)
    key = area_score if higher_is_better else -area_score
    order = sorted(range(k), key=lambda a: (key[a], -population[a], str(areas[a])))
    return [
        AreaAccess(
            rank=r,
            area=str(areas[a]),
            method=method,
            score=float(area_score[a]),
            population=float(population[a]),
            points=int(points[a]),
            nearest_mean=float(near_mean[a]),
            nearest_max=float(near_max[a]),
            share_beyond=float(share[a]),
        )
        for r, a in enumerate(order, start=1)
    ]


@dataclass(frozen=True)
class AccessReport:
    """Everything one run produces: per-point scores and distances, and the ranked areas."""

    method: Method
    score: FloatArray
    nearest_index: IntArray
    nearest_cost: FloatArray
    areas: list[AreaAccess]
    parameters: Mapping[str, Any]


def compute_access(
    demand: Demand,
    supply: Supply,
    method: Method,
    *,
    radius: float = 10.0,
    cost: CostModel | None = None,
    beta: float = 1.0,
    min_cost: float = 1.0,
    normalize: bool = False,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> AccessReport:
    """One measure with parameters fitted to a catchment ``radius`` (in the cost's unit, km by
    default), plus nearest-facility distance and the ranked areas.

    * ``2sfca``: catchment ``radius``, no decay (Luo & Wang 2003).
    * ``e2sfca``: Luo & Qi's three bands stretched to thirds of ``radius`` (weights 1, 0.68, 0.22).
    * ``3sfca``: Wan et al.'s four bands stretched so the last ends at ``radius``.
    * ``gravity``: Joseph & Bantock with d^-``beta`` (d floored at ``min_cost``), no cut-off.
    * ``hansen``: Hansen's potential, the same decay, no competition.
    * ``nearest``: the score is the distance to the nearest facility (higher is worse).

    ``share_beyond`` of each area uses ``radius`` as its threshold.
    """
    if method not in METHODS:
        raise AccessInputError(f"unknown method {method!r}; one of {', '.join(METHODS)}")
    if not radius > 0 or not math.isfinite(radius):
        raise AccessInputError("the catchment radius must be a positive number")
    model = _cost_for(demand, supply, cost)
    index, nearest_cost = model.nearest(block_elements)
    parameters: dict[str, Any] = {"radius": radius}
    common: dict[str, Any] = {"normalize": normalize, "block_elements": block_elements}
    result: FcaResult | None = None
    if method == "2sfca":
        result = two_stage_fca(demand, supply, model, max_cost=radius, **common)
    elif method == "e2sfca":
        bands = scale_bands(E2SFCA_BANDS, radius)
        parameters["bands"] = bands
        decay = StepDecay.from_bands(bands)
        result = enhanced_two_stage_fca(demand, supply, model, decay=decay, **common)
    elif method == "3sfca":
        bands = scale_bands(THREE_SFCA_BANDS, radius)
        parameters["bands"] = bands
        decay = StepDecay.from_bands(bands)
        result = three_stage_fca(demand, supply, model, decay=decay, **common)
    elif method in ("gravity", "hansen"):
        parameters.update(beta=beta, min_cost=min_cost)
        gravity = GravityDecay(scale=1.0, alpha=-beta, min_cost=min_cost)
        run = gravity_model if method == "gravity" else weighted_catchment
        result = run(demand, supply, model, decay=gravity, **common)
    if result is None:
        score = nearest_cost.copy()
        if normalize:
            score = normalize_scores(np.where(np.isfinite(score), score, 0.0), demand.weight)
    else:
        score = result.score
    areas = rank_areas(
        demand,
        score,
        nearest_cost,
        method,
        higher_is_better=result is not None,
        beyond=radius,
    )
    return AccessReport(method, score, index, nearest_cost, areas, parameters)


# -- demand and supply from the shared record (FHIR R4 as plain dicts) ------------------------


def _ndjson_files(path: Path, types: Collection[str]) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise AccessInputError(f"{path}: no such file or directory")
    # Bulk Data output names files by resource type (Patient.ndjson, Patient.000.ndjson,
    # 1.Patient.ndjson); reading only those skips the large Observation and Encounter files.
    found = sorted(
        p
        for p in path.iterdir()
        if p.is_file()
        and (p.name.endswith(".ndjson") or p.name.endswith(".ndjson.gz"))
        and any(t in p.name.split(".") for t in types)
    )
    return found


def read_resources(paths: Iterable[Path], types: Collection[str]) -> Iterator[dict[str, Any]]:
    """FHIR resources of the given types, as dicts, from NDJSON files or Bulk Data folders.

    A folder contributes its ``*.ndjson`` / ``*.ndjson.gz`` files named after one of ``types``;
    a file given by name is read whole and filtered by ``resourceType``.
    """
    for path in paths:
        for file in _ndjson_files(Path(path), types):
            with _open_binary(file) as handle:
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        resource = orjson.loads(line)
                    except orjson.JSONDecodeError as err:
                        raise AccessInputError(f"{file}:{number}: not JSON ({err})") from err
                    if isinstance(resource, dict) and resource.get("resourceType") in types:
                        yield resource


def _extension(resource: Mapping[str, Any], url: str) -> Mapping[str, Any] | None:
    for ext in resource.get("extension") or ():
        if isinstance(ext, Mapping) and ext.get("url") == url:
            return ext
    return None


def _geolocation(address: Mapping[str, Any]) -> tuple[float, float] | None:
    ext = _extension(address, GEOLOCATION_URL)
    if ext is None:
        return None
    values: dict[str, Any] = {}
    for part in ext.get("extension") or ():
        if isinstance(part, Mapping) and part.get("url") in ("latitude", "longitude"):
            values[str(part["url"])] = part.get("valueDecimal")
    try:
        lat, lon = float(values["latitude"]), float(values["longitude"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 360):
        return None
    return lat, lon


@dataclass(frozen=True)
class LoadStats:
    """What was read: records seen, used, skipped (no position), and distinct persons."""

    patient_records: int = 0
    patients_without_position: int = 0
    persons: int = 0
    locations: int = 0
    locations_skipped: int = 0


def demand_from_patients(
    patients: Iterable[Mapping[str, Any]],
    *,
    area_by: Literal["region", "state"] = "region",
    person_of: Mapping[str, str] | None = None,
) -> tuple[Demand, LoadStats]:
    """Demand points from Patient resources: one point per home position, weighted by persons.

    The home is ``address[0]``'s HL7 ``geolocation`` extension; the area is the Takamul
    ``region`` extension's display (code if no display), or ``address[0].state``
    (``area_by="state"``, also the fallback). A person registered at several facilities has
    several Patient records: they are counted once, by ``person_of`` (Patient id → person, e.g.
    the client registry's links) when given, otherwise by home position, birth date and sex
    (which keeps apart all but same-sex twins of one household). People sharing a home are one
    demand point whose weight is their number; ``urban_rural`` and ``region_code`` are kept as
    attributes.
    """
    seen: set[tuple[Any, ...]] = set()
    homes: dict[tuple[str, float, float, str], list[Any]] = {}
    records = without = 0
    for patient in patients:
        records += 1
        addresses = patient.get("address") or []
        position = _geolocation(addresses[0]) if addresses else None
        if position is None:
            without += 1
            continue
        address = addresses[0]
        region = _extension(patient, TAKAMUL_SD + "region")
        coding = (region or {}).get("valueCoding") or {}
        state = str(address.get("state") or "")
        if area_by == "region" and coding:
            area = str(coding.get("display") or coding.get("code") or state)
        else:
            area = state
        area = area or "unknown"
        urban = _extension(patient, TAKAMUL_SD + "urban-rural")
        urban_rural = str((urban or {}).get("valueCode") or "")
        pid = str(patient.get("id") or "")
        if person_of is not None and pid in person_of:
            person: tuple[Any, ...] = ("link", person_of[pid])
        else:
            person = ("home", position, patient.get("birthDate"), patient.get("gender"))
        if person in seen:
            continue
        seen.add(person)
        key = (area, position[0], position[1], urban_rural)
        entry = homes.setdefault(key, [0, str(coding.get("code") or "")])
        entry[0] += 1
    keys = list(homes)
    demand = Demand.build(
        ids=[f"{a}@{lat:.5f},{lon:.5f}" for a, lat, lon, _ in keys],
        lat=[k[1] for k in keys],
        lon=[k[2] for k in keys],
        weight=[homes[k][0] for k in keys],
        area=[k[0] for k in keys],
        attributes={
            "urban_rural": [k[3] for k in keys],
            "region_code": [homes[k][1] for k in keys],
        },
    )
    return demand, LoadStats(
        patient_records=records, patients_without_position=without, persons=len(seen)
    )


def _location_types(location: Mapping[str, Any]) -> set[str]:
    codes: set[str] = set()
    for concept in location.get("type") or ():
        for coding in (concept or {}).get("coding") or ():
            if coding.get("code"):
                codes.add(str(coding["code"]))
    return codes


def supply_from_locations(
    locations: Iterable[Mapping[str, Any]], *, types: Collection[str] | None = None
) -> tuple[Supply, LoadStats]:
    """Facilities from Location resources: ``position`` and the Takamul ``capacity`` extension.

    Jurisdictions (``mode: kind``, e.g. the region Locations of the synthetic data), inactive
    Locations and Locations without a position are skipped. ``types`` keeps only Locations with
    one of those ``type`` codes (e.g. ``PC`` for primary care clinics, ``GACH`` for general
    hospitals): capacities of different kinds (list size, beds) should not be added up. The
    capacity is the ``capacity`` extension (registered-list size for primary care, beds for
    hospitals), 1 when absent.
    """
    ids: list[str] = []
    lat: list[float] = []
    lon: list[float] = []
    capacity: list[float] = []
    kind: list[str] = []
    urban_rural: list[str] = []
    state: list[str] = []
    seen = skipped = 0
    for location in locations:
        seen += 1
        position = location.get("position") or {}
        codes = _location_types(location)
        if (
            location.get("mode") == "kind"
            or location.get("status") == "inactive"
            or (types is not None and not codes & set(types))
        ):
            skipped += 1
            continue
        try:
            la, lo = float(position["latitude"]), float(position["longitude"])
        except (KeyError, TypeError, ValueError):
            skipped += 1
            continue
        cap_ext = _extension(location, TAKAMUL_SD + "capacity") or {}
        cap = cap_ext.get("valueInteger", cap_ext.get("valueDecimal"))
        ids.append(str(location.get("id") or ""))
        lat.append(la)
        lon.append(lo)
        capacity.append(float(cap) if isinstance(cap, int | float) and cap >= 0 else 1.0)
        kind.append(",".join(sorted(codes)))
        ur = _extension(location, TAKAMUL_SD + "urban-rural") or {}
        urban_rural.append(str(ur.get("valueCode") or ""))
        state.append(str((location.get("address") or {}).get("state") or ""))
    supply = Supply.build(
        ids, lat, lon, capacity, {"type": kind, "urban_rural": urban_rural, "state": state}
    )
    return supply, LoadStats(locations=seen - skipped, locations_skipped=skipped)


def load_fhir(
    paths: Iterable[Path],
    *,
    location_types: Collection[str] | None = None,
    area_by: Literal["region", "state"] = "region",
    person_of: Mapping[str, str] | None = None,
) -> tuple[Demand, Supply, LoadStats]:
    """Demand from the Patients and supply from the Locations in NDJSON files or folders."""
    path_list = [Path(p) for p in paths]
    demand, patient_stats = demand_from_patients(
        read_resources(path_list, ("Patient",)), area_by=area_by, person_of=person_of
    )
    supply, location_stats = supply_from_locations(
        read_resources(path_list, ("Location",)), types=location_types
    )
    stats = LoadStats(
        patient_records=patient_stats.patient_records,
        patients_without_position=patient_stats.patients_without_position,
        persons=patient_stats.persons,
        locations=location_stats.locations,
        locations_skipped=location_stats.locations_skipped,
    )
    return demand, supply, stats


def aggregate_to_areas(demand: Demand) -> Demand:
    """One demand point per area, at its population-weighted centroid on the sphere.

    For a cost table keyed by area (``origin`` = area name). The centroid is the normalised
    weighted mean of the points' unit vectors (plain mean where the area's weight is 0).
    """
    areas, inverse = np.unique(demand.area.astype(str), return_inverse=True)
    xyz = unit_vectors(demand.lat, demand.lon)
    k = len(areas)
    total = np.bincount(inverse, weights=demand.weight, minlength=k)
    w = np.where(total[inverse] > 0, demand.weight, 1.0)
    summed = np.column_stack(
        [np.bincount(inverse, weights=xyz[:, c] * w, minlength=k) for c in range(3)]
    ).astype(np.float64)
    centre = summed / np.linalg.norm(summed, axis=1, keepdims=True)
    lat = np.degrees(np.arcsin(np.clip(centre[:, 2], -1.0, 1.0)))
    lon = np.degrees(np.arctan2(centre[:, 1], centre[:, 0]))
    return Demand.build(ids=areas, lat=lat, lon=lon, weight=total, area=areas)
