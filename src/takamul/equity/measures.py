"""The 21 summary measures of health inequality of the WHO Health Equity Assessment Toolkit.

One call of :func:`compute` takes the disaggregated data of one indicator by one dimension of
inequality (a :class:`DimensionData`: one :class:`Subgroup` per population subgroup) and returns
one measure with its standard error and 95% confidence interval.

Sources, cited again in each function's docstring:

* WHO. *Health Equity Assessment Toolkit (HEAT): technical notes*, HEAT and HEAT Plus v6, Geneva,
  2024 (the definitions, the applicability rules and the CI method of each measure).
* Hosseinpoor AR, Schlotheuber A, Nambiar D, Ross Z. *Health Equity Assessment Toolkit Plus (HEAT
  Plus)*. Glob Health Action 2018;11(sup1):1440783, doi:10.1080/16549716.2018.1440783, Table 2
  (which measure applies to binary, non-ordered and ordered dimensions).
* Schlotheuber A, Hosseinpoor AR. *Summary measures of health inequality: a review of existing
  measures and their application*. Int J Environ Res Public Health 2022;19(6):3697,
  doi:10.3390/ijerph19063697 (the formulas, Appendix A).
* WHO. *Health inequality monitoring: harnessing data to advance health equity*. Geneva, 2024,
  chapters 20-21 and annex 11 (https://whoequity.github.io/book_2024/).
* Antiporta DA, Menéndez P, Kirkby K, Hosseinpoor AR. *healthequal: calculating summary measures
  of inequality*, R package 1.0 (WHO, 2024): its documentation and published test values fix the
  conventions the technical notes leave open (which subgroups D and R compare, the scaling of TI,
  MLD, COV, IDIS and PAF, the simulation draws).
* WHO. *HEAT-Measures*, the R package that computes HEAT's measures (github.com/WHOequity/
  HEAT-Measures, ``calc_sii``, ``calc_par``, ``calc_paf``): read for two conventions that the
  defaults follow, the SII/RII regression weights and the PAF/PAR reference point.
* Wagstaff A, Paci P, van Doorslaer E (1991), Kakwani N, Wagstaff A, van Doorslaer E (1997) and
  O'Donnell O, van Doorslaer E, Wagstaff A, Lindelow M (2008, ch. 8) for the concentration indices;
  Pamuk ER (1985) for SII and RII; Pearcy JN, Keppel KG (2002) for the index of disparity;
  Theil H (1967) for TI and MLD; Harper S, Lynch J (2005) for BGV and the mean differences;
  Ahn J et al. (2018, 2019) for the BGV, TI and MLD variances and the simulation method;
  Walter SD (1978) for the PAF variance.

No code of HEAT or healthequal (AGPL) is used: everything here is written from the formulas.
The v6 technical notes themselves (a PDF) could not be read when this module was written: where a
docstring cites "HEAT technical notes", the definition was taken from the WHO publications above,
which describe HEAT's measures, and checked against healthequal's published values.

The defaults reproduce the WHO's published numbers (``tests/data/equity/who_published_values.csv``
holds all of them); :class:`ComputeOptions` keeps the other conventions as documented choices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from statistics import NormalDist
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "ANY_DIMENSION",
    "CI_METHOD",
    "DEFAULT_SEED",
    "DEFAULT_SIMULATIONS",
    "IMPACT_REFERENCES",
    "NEEDS_MEAN",
    "NEEDS_POPULATION",
    "NEEDS_REFERENCE",
    "NON_ORDERED_ONLY",
    "ORDERED_ONLY",
    "RELATIVE",
    "SII_WEIGHTINGS",
    "SIMULATED",
    "CIMethod",
    "ComputeOptions",
    "DimensionData",
    "ImpactReference",
    "Measure",
    "MeasureResult",
    "NotApplicableError",
    "SiiWeighting",
    "Subgroup",
    "all_measures",
    "applicable",
    "compute",
    "difference_and_ratio",
    "not_applicable_reason",
    "percentage_subgroup",
]

FloatArray = npt.NDArray[np.float64]

# HEAT reports the Theil index and the mean log deviation multiplied by 1000, and the relative
# measures COV, IDIS and PAF as percentages (healthequal's published values confirm the factors).
THEIL_FACTOR = 1000.0
PERCENT = 100.0
# Simulated intervals: 1000 draws keep the Monte Carlo error of the 2.5th/97.5th percentiles small
# (healthequal defaults to 100); the seed is healthequal's default, fixed so results repeat.
DEFAULT_SIMULATIONS = 1000
DEFAULT_SEED = 123456


class Measure(StrEnum):
    """The HEAT summary measures; the value is HEAT's lower-case code."""

    D = "d"
    R = "r"
    ACI = "aci"
    RCI = "rci"
    SII = "sii"
    RII = "rii"
    BGV = "bgv"
    BGSD = "bgsd"
    COV = "cov"
    IDISU = "idisu"
    IDISW = "idisw"
    MDBU = "mdbu"
    MDBW = "mdbw"
    MDMU = "mdmu"
    MDMW = "mdmw"
    MDRU = "mdru"
    MDRW = "mdrw"
    MLD = "mld"
    TI = "ti"
    PAF = "paf"
    PAR = "par"


class CIMethod(StrEnum):
    """How the 95% confidence interval of a measure is obtained."""

    # A closed-form (delta-method) standard error of the measure; CI = estimate ± z·se, or on the
    # log scale for ratios.
    ANALYTIC = "analytic"
    # The standard error of the fitted regression that defines the measure (ACI, RCI, SII, RII).
    REGRESSION = "regression"
    # Parametric bootstrap: subgroup estimates drawn from N(estimate, se²), truncated to the
    # indicator's range; CI = 2.5th and 97.5th percentiles of the simulated measure.
    SIMULATION = "simulation"


CI_METHOD: dict[Measure, CIMethod] = {
    Measure.D: CIMethod.ANALYTIC,
    Measure.R: CIMethod.ANALYTIC,
    Measure.ACI: CIMethod.REGRESSION,
    Measure.RCI: CIMethod.REGRESSION,
    Measure.SII: CIMethod.REGRESSION,
    Measure.RII: CIMethod.REGRESSION,
    Measure.BGV: CIMethod.ANALYTIC,
    Measure.BGSD: CIMethod.SIMULATION,
    Measure.COV: CIMethod.SIMULATION,
    Measure.IDISU: CIMethod.SIMULATION,
    Measure.IDISW: CIMethod.SIMULATION,
    Measure.MDBU: CIMethod.SIMULATION,
    Measure.MDBW: CIMethod.SIMULATION,
    Measure.MDMU: CIMethod.SIMULATION,
    Measure.MDMW: CIMethod.SIMULATION,
    Measure.MDRU: CIMethod.SIMULATION,
    Measure.MDRW: CIMethod.SIMULATION,
    Measure.MLD: CIMethod.ANALYTIC,
    Measure.TI: CIMethod.ANALYTIC,
    Measure.PAF: CIMethod.ANALYTIC,
    Measure.PAR: CIMethod.ANALYTIC,
}
SIMULATED: frozenset[Measure] = frozenset(
    m for m, method in CI_METHOD.items() if method is CIMethod.SIMULATION
)

ORDERED_ONLY: frozenset[Measure] = frozenset({Measure.ACI, Measure.RCI, Measure.SII, Measure.RII})
NON_ORDERED_ONLY: frozenset[Measure] = frozenset(
    {
        Measure.BGV,
        Measure.BGSD,
        Measure.COV,
        Measure.IDISU,
        Measure.IDISW,
        Measure.MDBU,
        Measure.MDBW,
        Measure.MDMU,
        Measure.MDMW,
        Measure.MDRU,
        Measure.MDRW,
        Measure.MLD,
        Measure.TI,
    }
)
# Pairwise and impact measures apply to any dimension with two or more subgroups (HEAT Plus,
# Glob Health Action 2018, Table 2); every other measure is "complex" and needs more than two.
ANY_DIMENSION: frozenset[Measure] = frozenset({Measure.D, Measure.R, Measure.PAF, Measure.PAR})
NEEDS_POPULATION: frozenset[Measure] = frozenset(
    {
        Measure.ACI,
        Measure.RCI,
        Measure.SII,
        Measure.RII,
        Measure.BGV,
        Measure.BGSD,
        Measure.COV,
        Measure.IDISW,
        Measure.MDBW,
        Measure.MDMW,
        Measure.MDRW,
        Measure.MLD,
        Measure.TI,
    }
)
NEEDS_REFERENCE: frozenset[Measure] = frozenset({Measure.MDRU, Measure.MDRW})
# Measures that use the setting mean μ: the population-weighted mean of the subgroup estimates,
# or the reported setting average when populations are missing.
NEEDS_MEAN: frozenset[Measure] = frozenset({Measure.IDISU, Measure.MDMU, Measure.PAF, Measure.PAR})
# Relative measures divide by the mean (or take logarithms): they need a positive mean and
# non-negative estimates.
RELATIVE: frozenset[Measure] = frozenset(
    {
        Measure.R,
        Measure.RCI,
        Measure.RII,
        Measure.COV,
        Measure.IDISU,
        Measure.IDISW,
        Measure.MLD,
        Measure.TI,
        Measure.PAF,
    }
)


class NotApplicableError(ValueError):
    """The measure is not defined for this dimension (HEAT's applicability rules)."""


@dataclass(frozen=True, slots=True)
class Subgroup:
    """One population subgroup of a dimension of inequality (one row of the HEAT template).

    ``population`` is the number of people (or the population share; only PAF and PAR's confidence
    interval needs counts). ``order`` ranks the subgroups of an ordered dimension from the most
    disadvantaged (lowest) to the most advantaged (highest); it is ignored for non-ordered ones.
    """

    name: str
    estimate: float
    se: float | None = None
    population: float | None = None
    order: int | None = None
    is_reference: bool = False


@dataclass(frozen=True, slots=True)
class DimensionData:
    """One indicator disaggregated by one dimension of inequality in one setting, date and source.

    ``favourable`` is True when the goal is a maximum (e.g. skilled birth attendance), False for an
    adverse indicator (e.g. under-five mortality). ``scale`` is the indicator scale (100 for a
    percentage, 1000 for a rate per 1000). ``setting_average`` is the reported overall average.
    """

    subgroups: tuple[Subgroup, ...]
    favourable: bool
    scale: float
    ordered: bool
    setting_average: float | None = None

    def __post_init__(self) -> None:
        # The template reader reports these with line numbers; this guards direct callers.
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"indicator scale must be a positive number, got {self.scale}")
        names = [s.name for s in self.subgroups]
        if len(set(names)) != len(names):
            raise ValueError("subgroup names must be unique within a dimension")
        for s in self.subgroups:
            if not math.isfinite(s.estimate):
                raise ValueError(f"subgroup {s.name!r}: estimate must be a finite number")
            if s.se is not None and not (math.isfinite(s.se) and s.se >= 0):
                raise ValueError(f"subgroup {s.name!r}: se must be a non-negative number")
            if s.population is not None and not (math.isfinite(s.population) and s.population > 0):
                raise ValueError(f"subgroup {s.name!r}: population must be a positive number")
        if self.ordered:
            orders = [s.order for s in self.subgroups]
            if any(o is None for o in orders):
                raise ValueError("every subgroup of an ordered dimension needs an order")
            if len(set(orders)) != len(orders):
                raise ValueError("subgroup orders must be distinct in an ordered dimension")
        if sum(s.is_reference for s in self.subgroups) > 1:
            raise ValueError("at most one subgroup can be the reference subgroup")
        if self.setting_average is not None and not math.isfinite(self.setting_average):
            raise ValueError("setting average must be a finite number")

    @property
    def reference(self) -> Subgroup | None:
        return next((s for s in self.subgroups if s.is_reference), None)

    @property
    def has_population(self) -> bool:
        return bool(self.subgroups) and all(s.population is not None for s in self.subgroups)

    @property
    def has_se(self) -> bool:
        return bool(self.subgroups) and all(s.se is not None for s in self.subgroups)


@dataclass(frozen=True, slots=True)
class MeasureResult:
    """A summary measure: estimate, standard error and confidence interval (None when unknown).

    ``se`` is on the scale of the estimate (for R and RII: se(R) = R·se(ln R)); the intervals of R
    and RII are computed on the log scale and are not symmetric. For simulated intervals ``se`` is
    the standard deviation of the simulated measure.
    """

    estimate: float
    se: float | None
    ci_lb: float | None
    ci_ub: float | None
    ci_method: CIMethod | None = None


SiiWeighting = Literal["heat", "population"]
ImpactReference = Literal["heat", "best"]
SII_WEIGHTINGS: tuple[SiiWeighting, ...] = ("heat", "population")
IMPACT_REFERENCES: tuple[ImpactReference, ...] = ("heat", "best")
# healthequal 1.0 weights the SII/RII regression as HEAT does; its name stays accepted.
_SII_WEIGHTING_ALIASES = {"healthequal": "heat"}


@dataclass(frozen=True, slots=True)
class ComputeOptions:
    """Tuning of :func:`compute`. The defaults reproduce the WHO's published values.

    ``simulations`` and ``seed`` drive the parametric bootstrap of the simulated measures (fixed
    seed: the same data give the same interval).

    ``sii_weighting`` chooses the weights of the SII/RII logistic regression (see
    :func:`_slope_fit`):

    * ``"heat"`` (default): as HEAT (HEAT-Measures ``calc_sii``) and healthequal 1.0 ``sii``: the
      populations, rounded up to whole people, are both the binomial trials and the prior
      weights (effective weights ∝ N²), the events rounded to whole people, the ridit ranks taken
      on the rounded populations. It reproduces the published SII 44.45 and RII 3.160 of
      healthequal's tests and needs populations as numbers of people (each at least 1).
      ``"healthequal"`` is accepted as another name for it.
    * ``"population"``: each subgroup weighted by its population share once, so each person
      counts once; it also works with populations given as shares, and gives SII 44.89 and RII
      3.236 on the same data.

    ``impact_reference`` chooses the reference point of PAF and PAR (see :func:`_impact`):

    * ``"heat"`` (default): the HEAT technical notes' rule, as HEAT-Measures ``calc_par``: in a
      non-ordered dimension with a reference subgroup (``reference_subgroup`` = 1), that
      subgroup; otherwise the most advantaged subgroup (ordered) or the best-performing one
      (non-ordered).
    * ``"best"``: always the most advantaged (ordered) or best-performing (non-ordered)
      subgroup, ignoring a reference subgroup, as healthequal 1.0's ``paf`` and ``parisk``,
      which take no reference argument.
    """

    simulations: int = DEFAULT_SIMULATIONS
    seed: int = DEFAULT_SEED
    confidence: float = 0.95
    sii_weighting: SiiWeighting = "heat"
    impact_reference: ImpactReference = "heat"

    def __post_init__(self) -> None:
        if self.simulations < 2:
            raise ValueError("simulations must be at least 2")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError("confidence must be in (0, 1)")
        weighting = _SII_WEIGHTING_ALIASES.get(self.sii_weighting, self.sii_weighting)
        if weighting not in SII_WEIGHTINGS:
            raise ValueError(
                f"sii_weighting is one of {', '.join(SII_WEIGHTINGS)}, not {self.sii_weighting!r}"
            )
        # frozen: set the canonical name the way dataclasses do
        object.__setattr__(self, "sii_weighting", weighting)
        if self.impact_reference not in IMPACT_REFERENCES:
            raise ValueError(
                f"impact_reference is one of {', '.join(IMPACT_REFERENCES)}, "
                f"not {self.impact_reference!r}"
            )

    @property
    def z(self) -> float:
        return NormalDist().inv_cdf(1.0 - (1.0 - self.confidence) / 2.0)


DEFAULT_OPTIONS = ComputeOptions()


# --------------------------------------------------------------------------------------------
# Applicability


def not_applicable_reason(
    measure: Measure, data: DimensionData, options: ComputeOptions = DEFAULT_OPTIONS
) -> str | None:
    """Why HEAT does not calculate ``measure`` for ``data``; None when it applies.

    Rules (HEAT technical notes; HEAT Plus, Glob Health Action 2018, Table 2):

    * D, R, PAF and PAR apply to any dimension with at least two subgroups; every other measure
      needs more than two subgroups.
    * ACI, RCI, SII and RII apply to ordered dimensions only; BGV, BGSD, COV, IDISU, IDISW, MDBU,
      MDBW, MDMU, MDMW, MDRU, MDRW, MLD and TI to non-ordered dimensions only.
    * Weighted measures (ACI, RCI, SII, RII, BGV, BGSD, COV, IDISW, MDBW, MDMW, MDRW, MLD, TI)
      need the population of every subgroup; IDISU, MDMU, PAF and PAR need the setting mean
      (populations, or the reported setting average).
    * MDRU and MDRW need a reference subgroup.
    * Relative measures (R, RCI, RII, COV, IDIS, MLD, TI, PAF) need non-negative estimates and a
      positive mean; MLD needs every estimate positive (it takes logarithms); R needs a positive
      denominator.
    * SII and RII need a regression with a finite solution under ``options.sii_weighting``; the
      HEAT weighting also needs populations as numbers of people (each at least 1).
    """
    subgroups = data.subgroups
    n = len(subgroups)
    if n < 2:
        return "needs at least two subgroups"
    if measure not in ANY_DIMENSION and n <= 2:
        return "a complex measure: needs more than two subgroups"
    if measure in ORDERED_ONLY and not data.ordered:
        return "applies to ordered dimensions only"
    if measure in NON_ORDERED_ONLY and data.ordered:
        return "applies to non-ordered dimensions only"
    if measure in NEEDS_POPULATION and not data.has_population:
        return "needs the population of every subgroup"
    if measure in NEEDS_REFERENCE and data.reference is None:
        return "needs a reference subgroup"
    mean = _setting_mean(data)
    if measure in NEEDS_MEAN and mean is None:
        return "needs the setting average or the population of every subgroup"
    estimates = [s.estimate for s in subgroups]
    if measure in RELATIVE:
        if min(estimates) < 0:
            return "a relative measure: needs non-negative estimates"
        if mean is not None and mean <= 0:
            return "a relative measure: needs a positive mean"
    if measure is Measure.MLD and min(estimates) <= 0:
        return "takes logarithms of the estimates: needs every estimate positive"
    if measure is Measure.R and _pair(data)[1].estimate <= 0:
        return "the ratio needs a positive denominator"
    if measure in (Measure.SII, Measure.RII):
        if options.sii_weighting == "heat" and min(s.population or 0.0 for s in subgroups) < 1:
            return (
                "HEAT's SII/RII weighting needs populations as numbers of people (at least 1); "
                "for population shares use sii_weighting 'population'"
            )
        try:
            fit = _slope_fit(data, options)
        except _FitError as err:
            return str(err)
        if measure is Measure.RII and (fit.v0 <= 0 or fit.v1 <= 0):
            return "the predicted values at the extremes must be positive for a ratio"
    return None


def applicable(
    measure: Measure, data: DimensionData, options: ComputeOptions = DEFAULT_OPTIONS
) -> bool:
    """Whether HEAT calculates ``measure`` for ``data`` (see :func:`not_applicable_reason`)."""
    return not_applicable_reason(measure, data, options) is None


# --------------------------------------------------------------------------------------------
# Entry points


def compute(
    data: DimensionData, measure: Measure, options: ComputeOptions = DEFAULT_OPTIONS
) -> MeasureResult:
    """Compute one HEAT summary measure with its confidence interval.

    Raises :class:`NotApplicableError` when HEAT's rules exclude the measure for this dimension.
    """
    reason = not_applicable_reason(measure, data, options)
    if reason is not None:
        raise NotApplicableError(f"{measure.value}: {reason}")
    if measure in SIMULATED:
        return _simulated(measure, data, options)
    return _ANALYTIC[measure](data, options)


def all_measures(
    data: DimensionData, options: ComputeOptions = DEFAULT_OPTIONS
) -> dict[Measure, MeasureResult]:
    """Every applicable measure, in HEAT's order (the order of :class:`Measure`)."""
    return {m: compute(data, m, options) for m in Measure if applicable(m, data, options)}


# --------------------------------------------------------------------------------------------
# Shared pieces


def _setting_mean(data: DimensionData) -> float | None:
    """μ: the population-weighted mean of the subgroup estimates, else the setting average.

    healthequal documents this precedence ("if population is not specified for all subgroups,
    the setting average is used"); the weighted mean keeps μ consistent with the subgroups used.
    """
    if data.has_population:
        pop = np.array([s.population for s in data.subgroups], dtype=np.float64)
        est = np.array([s.estimate for s in data.subgroups], dtype=np.float64)
        return float(pop @ est / pop.sum())
    return data.setting_average


def _shares(data: DimensionData) -> FloatArray:
    pop = np.array([s.population for s in data.subgroups], dtype=np.float64)
    return pop / pop.sum()


def _estimates(data: DimensionData) -> FloatArray:
    return np.array([s.estimate for s in data.subgroups], dtype=np.float64)


def _normal_ci(estimate: float, se: float | None, z: float) -> tuple[float | None, float | None]:
    if se is None or not math.isfinite(se):
        return None, None
    return estimate - z * se, estimate + z * se


def _result(estimate: float, se: float | None, z: float, method: CIMethod) -> MeasureResult:
    lb, ub = _normal_ci(estimate, se, z)
    if lb is None:
        return MeasureResult(estimate, None, None, None)
    return MeasureResult(estimate, se, lb, ub, method)


def _pair(data: DimensionData) -> tuple[Subgroup, Subgroup]:
    """The subgroups (y1, y2) that D = y1 − y2 and R = y1 / y2 compare.

    Ordered dimensions: most-advantaged vs most-disadvantaged for favourable indicators,
    most-disadvantaged vs most-advantaged for adverse ones (healthequal ``d``/``r``
    documentation), so that a positive D (R > 1) means the disadvantaged are worse off.
    Non-ordered dimensions without a reference subgroup: highest vs lowest estimate. With a
    reference subgroup: the reference vs the lowest other subgroup (favourable), the highest other
    subgroup vs the reference (adverse) — again positive when a subgroup is worse off than the
    reference. (The other subgroups exclude the reference, so a binary dimension compares its
    two subgroups in the reference's direction.)
    """
    subgroups = data.subgroups
    if data.ordered:
        # _order is total here: DimensionData checks every ordered subgroup has an order.
        lo = min(subgroups, key=_order)
        hi = max(subgroups, key=_order)
        return (hi, lo) if data.favourable else (lo, hi)
    ref = data.reference
    if ref is None:
        highest = max(subgroups, key=lambda s: s.estimate)
        lowest = min(subgroups, key=lambda s: s.estimate)
        return highest, lowest
    others = [s for s in subgroups if not s.is_reference]
    if data.favourable:
        return ref, min(others, key=lambda s: s.estimate)
    return max(others, key=lambda s: s.estimate), ref


def _order(s: Subgroup) -> int:
    return s.order if s.order is not None else 0


def _ordered_arrays(
    data: DimensionData, whole_people: bool = False
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(estimates, population, ridit rank) sorted from most disadvantaged to most advantaged.

    The rank of subgroup j is the cumulative population share below it plus half its own share,
    i.e. the mid-point of its range in the population ranked from 0 (most disadvantaged) to 1.
    ``whole_people`` rounds each population up to a whole number of people first, as HEAT's
    SII/RII do (HEAT-Measures ``calc_sii``; healthequal ``sii``).
    """
    ordered = sorted(data.subgroups, key=_order)
    est = np.array([s.estimate for s in ordered], dtype=np.float64)
    pop = np.array([s.population for s in ordered], dtype=np.float64)
    if whole_people:
        pop = np.ceil(pop)
    share = pop / pop.sum()
    rank = np.cumsum(share) - share / 2.0
    return est, pop, rank


# --------------------------------------------------------------------------------------------
# Pairwise measures


def _difference(data: DimensionData, options: ComputeOptions) -> MeasureResult:
    """Difference D = y1 − y2 (HEAT technical notes; Schlotheuber & Hosseinpoor 2022, §3.1).

    The two subgroups are chosen by :func:`_pair`. se(D) = √(se1² + se2²) for independent
    subgroup estimates; CI = D ± 1.96·se (HEAT technical notes).
    """
    y1, y2 = _pair(data)
    d = y1.estimate - y2.estimate
    se = None if y1.se is None or y2.se is None else math.hypot(y1.se, y2.se)
    return _result(d, se, options.z, CIMethod.ANALYTIC)


def _ratio(data: DimensionData, options: ComputeOptions) -> MeasureResult:
    """Ratio R = y1 / y2 (HEAT technical notes; Schlotheuber & Hosseinpoor 2022, §3.1).

    CI on the log scale by the delta method (Ahn et al. 2018, JCO Clin Cancer Inform 2:1-19):
    se(ln R) = √(se1²/y1² + se2²/y2²), CI = exp(ln R ± 1.96·se(ln R)); reported se(R) = R·se(ln R).
    """
    y1, y2 = _pair(data)
    r = y1.estimate / y2.estimate
    if y1.se is None or y2.se is None or y1.estimate <= 0:
        return MeasureResult(r, None, None, None)
    se_log = math.sqrt((y1.se / y1.estimate) ** 2 + (y2.se / y2.estimate) ** 2)
    log_r = math.log(r)
    return MeasureResult(
        r,
        r * se_log,
        math.exp(log_r - options.z * se_log),
        math.exp(log_r + options.z * se_log),
        CIMethod.ANALYTIC,
    )


# --------------------------------------------------------------------------------------------
# Concentration indices


def _concentration(data: DimensionData) -> tuple[float, float, float]:
    """(ACI, se(ACI), μ) by the "convenient regression" for grouped data.

    ACI = Σ p_j (2X_j − 1) y_j with p_j the population share and X_j the ridit rank of subgroup j
    (Wagstaff, Paci & van Doorslaer 1991, Soc Sci Med 33:545; HEAT technical notes).

    The standard error is that of the slope β in the weighted least-squares regression
    2σ_X² y_j = α + β X_j + ε_j with weights n_j (σ_X² = Σ p_j (X_j − ½)² the variance of the
    rank), whose slope equals ACI exactly (Kakwani, Wagstaff & van Doorslaer 1997, J Econometrics
    77:87; O'Donnell et al. 2008, *Analyzing Health Equity Using Household Survey Data*, ch. 8,
    grouped data). The residual variance has T − 2 degrees of freedom (T subgroups); the
    standard error does not depend on whether populations are counts or shares.
    """
    est, pop, rank = _ordered_arrays(data)
    share = pop / pop.sum()
    mean = float(share @ est)
    sigma2 = float(share @ (rank - 0.5) ** 2)
    x = np.column_stack([np.ones_like(rank), rank])
    lhs = 2.0 * sigma2 * est
    xtwx = x.T @ (x * pop[:, None])
    beta = np.linalg.solve(xtwx, x.T @ (pop * lhs))
    residual = lhs - x @ beta
    dispersion = float(pop @ residual**2) / (len(est) - 2)
    covariance = dispersion * np.linalg.inv(xtwx)
    return float(beta[1]), math.sqrt(max(float(covariance[1, 1]), 0.0)), mean


def _aci(data: DimensionData, options: ComputeOptions) -> MeasureResult:
    """Absolute concentration index (see :func:`_concentration`); CI = ACI ± 1.96·se.

    The rank runs from the most disadvantaged (0) to the most advantaged (1) whatever the
    indicator type: ACI > 0 means the indicator is concentrated among the advantaged (good for a
    favourable indicator, bad for an adverse one).
    """
    aci, se, _ = _concentration(data)
    return _result(aci, se, options.z, CIMethod.REGRESSION)


def _rci(data: DimensionData, options: ComputeOptions) -> MeasureResult:
    """Relative concentration index RCI = ACI / μ (Wagstaff, Paci & van Doorslaer 1991).

    The same regression with y_j/μ on the left (Kakwani et al. 1997): se(RCI) = se(ACI)/μ.
    RCI lies in [−1, 1]; it is reported unscaled (as healthequal does), so RCI = ACI / μ.
    """
    aci, se, mean = _concentration(data)
    return _result(aci / mean, se / mean, options.z, CIMethod.REGRESSION)


# --------------------------------------------------------------------------------------------
# Regression-based measures


class _FitError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class _SlopeFit:
    """Predicted values at rank 1 (v1) and 0 (v0) on the indicator scale, with their gradients
    with respect to the regression coefficients and the coefficients' covariance."""

    v1: float
    v0: float
    grad_v1: FloatArray
    grad_v0: FloatArray
    covariance: FloatArray


def _slope_fit(data: DimensionData, options: ComputeOptions) -> _SlopeFit:
    """The regression behind SII and RII (Pamuk 1985; HEAT technical notes).

    The population is ranked from the most disadvantaged (rank 0) to the most advantaged
    (rank 1); the indicator is regressed on the ridit rank of each subgroup, weighting each
    subgroup by its population. As in HEAT (v4 onwards) and healthequal, the model is a
    generalised linear model with logit link for a bounded indicator — estimates within
    [0, scale], modelled as proportions y_j/scale (quasi-binomial) — and a weighted linear
    regression otherwise (our fallback for unbounded indicators such as mean values).
    The covariance of the coefficients is the HC1 heteroskedasticity-consistent sandwich
    (White 1980; MacKinnon & White 1985), the estimator HEAT and healthequal use, with T − 2
    degrees of freedom for T subgroups.

    Weights (``options.sii_weighting``): with ``"heat"`` (the default) the populations are
    rounded up to whole people N_j, the events to round(y_j/scale · N_j), and each subgroup is a
    binomial observation of N_j trials that is also given the prior weight N_j — HEAT's
    ``glm(cbind(events, non-events) ~ rank, weights = N)`` (HEAT-Measures ``calc_sii``;
    healthequal 1.0 ``sii``), effective weights ∝ N_j²; the ranks are those of the rounded
    populations. With ``"population"`` each subgroup has the weight of its population share,
    each person counting once.
    """
    heat = options.sii_weighting == "heat"
    est, pop, rank = _ordered_arrays(data, whole_people=heat)
    scale = data.scale
    x = np.column_stack([np.ones_like(rank), rank])
    n = len(est)
    if est.min() >= 0 and est.max() <= scale:
        if heat:
            trials = pop  # already whole people
            proportion = np.round(est / scale * trials) / trials
            prior = trials * trials
        else:
            proportion = est / scale
            prior = pop / pop.sum()
        beta, info_inv = _logistic_irls(x, proportion, prior)
        mu = _expit(x @ beta)
        scores = x * (prior * (proportion - mu))[:, None]
        covariance = info_inv @ (scores.T @ scores) @ info_inv * (n / (n - 2))
        p1 = float(_expit(beta[0] + beta[1]))
        p0 = float(_expit(beta[0]))
        grad_p1 = p1 * (1 - p1) * np.array([1.0, 1.0])
        grad_p0 = p0 * (1 - p0) * np.array([1.0, 0.0])
        return _SlopeFit(p1 * scale, p0 * scale, grad_p1 * scale, grad_p0 * scale, covariance)
    weights = pop / pop.sum()
    xtwx_inv = np.linalg.inv(x.T @ (x * weights[:, None]))
    beta = xtwx_inv @ (x.T @ (weights * est))
    scores = x * (weights * (est - x @ beta))[:, None]
    covariance = xtwx_inv @ (scores.T @ scores) @ xtwx_inv * (n / (n - 2))
    return _SlopeFit(
        float(beta[0] + beta[1]),
        float(beta[0]),
        np.array([1.0, 1.0]),
        np.array([1.0, 0.0]),
        covariance,
    )


def _expit(eta: FloatArray | float) -> FloatArray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.asarray(eta, dtype=np.float64))))


def _logistic_irls(
    x: FloatArray, proportion: FloatArray, prior: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Maximum (quasi-)likelihood logistic regression by iteratively reweighted least squares.

    Returns the coefficients and the inverse of the (unscaled) information matrix X'WX.
    Starts from the least-squares line through the logits of the observed proportions (clipped
    away from 0 and 1) and halves any step that raises the deviance, so that subgroups at
    exactly 0% or 100% still converge.
    """
    start = np.clip(proportion, 0.001, 0.999)
    eta = np.log(start / (1 - start))
    beta: FloatArray = np.linalg.lstsq(x, eta, rcond=None)[0].astype(np.float64)

    def deviance(b: FloatArray) -> float:
        m = np.clip(_expit(x @ b), 1e-300, 1 - 1e-16)
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = np.where(proportion > 0, proportion * np.log(proportion / m), 0.0)
            t2 = np.where(
                proportion < 1, (1 - proportion) * np.log((1 - proportion) / (1 - m)), 0.0
            )
        return float(2 * prior @ (t1 + t2))

    current = deviance(beta)
    # The deviance grows with the prior weights (N² under HEAT's weighting): a tolerance in
    # proportion to their total makes the iterations the same whatever the scale of the weights.
    tolerance = 1e-12 * 0.1 * float(prior.sum())
    for _ in range(200):
        m = _expit(x @ beta)
        w = prior * m * (1 - m)
        if not np.all(np.isfinite(w)) or w.max() <= 0:
            raise _FitError("the logistic regression did not converge")
        info = x.T @ (x * w[:, None])
        try:
            step = np.linalg.solve(info, x.T @ (prior * (proportion - m)))
        except np.linalg.LinAlgError as err:
            raise _FitError("the logistic regression did not converge") from err
        factor = 1.0
        while True:
            candidate = beta + factor * step
            new = deviance(candidate)
            if new <= current + 1e-12 * (1 + abs(current)) or factor < 1e-8:
                break
            factor /= 2
        beta = candidate.astype(np.float64)
        converged = abs(current - new) <= 1e-12 * abs(new) + tolerance
        current = new
        if converged:
            break
    else:
        raise _FitError("the logistic regression did not converge")
    if not np.all(np.isfinite(beta)) or np.abs(beta).max() > 50:
        # |β| this large means the subgroups are (quasi-)separated: v0 or v1 is 0 or the scale.
        raise _FitError("the logistic regression does not converge (separated estimates)")
    m = _expit(x @ beta)
    info = x.T @ (x * (prior * m * (1 - m))[:, None])
    return beta, np.linalg.inv(info).astype(np.float64)


def _sii(data: DimensionData, options: ComputeOptions) -> MeasureResult:
    """Slope index of inequality SII = v1 − v0 (Pamuk 1985; HEAT technical notes).

    v1 and v0 are the values predicted by the regression of :func:`_slope_fit` at the most
    advantaged (rank 1) and most disadvantaged (rank 0) ends of the population. SII > 0 means
    higher values among the advantaged. se by the delta method on the coefficients' HC1
    covariance; CI = SII ± 1.96·se.
    """
    fit = _slope_fit(data, options)
    grad = fit.grad_v1 - fit.grad_v0
    se = math.sqrt(max(float(grad @ fit.covariance @ grad), 0.0))
    return _result(fit.v1 - fit.v0, se, options.z, CIMethod.REGRESSION)


def _rii(data: DimensionData, options: ComputeOptions) -> MeasureResult:
    """Relative index of inequality RII = v1 / v0 (Pamuk 1985; HEAT technical notes).

    Same regression as SII. The CI is computed on the log scale: se(ln RII) by the delta method
    (∂ln v/∂β = ∇v / v), CI = exp(ln RII ± 1.96·se(ln RII)); reported se(RII) = RII·se(ln RII).
    """
    fit = _slope_fit(data, options)
    rii = fit.v1 / fit.v0
    grad = fit.grad_v1 / fit.v1 - fit.grad_v0 / fit.v0
    se_log = math.sqrt(max(float(grad @ fit.covariance @ grad), 0.0))
    log_rii = math.log(rii)
    return MeasureResult(
        rii,
        rii * se_log,
        math.exp(log_rii - options.z * se_log),
        math.exp(log_rii + options.z * se_log),
        CIMethod.REGRESSION,
    )


# --------------------------------------------------------------------------------------------
# Variance and disproportionality measures with analytic intervals


def _bgv(data: DimensionData, options: ComputeOptions) -> MeasureResult:
    """Between-group variance BGV = Σ p_j (y_j − μ)² (Harper & Lynch 2005; HEAT technical notes).

    Variance (Ahn et al. 2018, JCO Clin Cancer Inform 2:1-19), for independent subgroup
    estimates with variances s_j² = se_j²:
    Var(BGV) = 4 Σ p_j² s_j² (y_j − μ)²
               + 2 [ (Σ p_j² s_j²)² − Σ p_j⁴ s_j⁴ + Σ p_j² (1 − p_j)² s_j⁴ ].
    CI = BGV ± 1.96·se.
    """
    p = _shares(data)
    y = _estimates(data)
    mean = float(p @ y)
    bgv = float(p @ (y - mean) ** 2)
    if not data.has_se:
        return MeasureResult(bgv, None, None, None)
    s2 = np.array([s.se for s in data.subgroups], dtype=np.float64) ** 2
    variance = 4 * float(p**2 * s2 @ (y - mean) ** 2) + 2 * (
        float(p**2 @ s2) ** 2 - float(p**4 @ s2**2) + float((p**2 * (1 - p) ** 2) @ s2**2)
    )
    return _result(bgv, math.sqrt(max(variance, 0.0)), options.z, CIMethod.ANALYTIC)


def _mld(data: DimensionData, options: ComputeOptions) -> MeasureResult:
    """Mean log deviation MLD = 1000 · Σ p_j (−ln(y_j/μ)) (Theil 1967; Harper & Lynch 2005).

    HEAT reports MLD multiplied by 1000. Delta-method variance (Ahn et al. 2018), r_j = y_j/μ:
    Var(MLD/1000) = Σ p_j² se_j² (1 − 1/r_j)² / μ²; CI = MLD ± 1.96·se (se also ×1000).
    """
    p = _shares(data)
    y = _estimates(data)
    mean = float(p @ y)
    r = y / mean
    mld = -float(p @ np.log(r)) * THEIL_FACTOR
    if not data.has_se:
        return MeasureResult(mld, None, None, None)
    se = np.array([s.se for s in data.subgroups], dtype=np.float64)
    var = float(np.sum(p**2 * se**2 * (1 - 1 / r) ** 2)) / mean**2
    return _result(mld, math.sqrt(var) * THEIL_FACTOR, options.z, CIMethod.ANALYTIC)


def _theil(data: DimensionData, options: ComputeOptions) -> MeasureResult:
    """Theil index TI = 1000 · Σ p_j r_j ln r_j, r_j = y_j/μ (Theil 1967; Harper & Lynch 2005).

    HEAT reports TI multiplied by 1000; 0·ln 0 = 0. Delta-method variance (Ahn et al. 2018):
    with T' = Σ p_j r_j (1 + ln r_j), Var(TI/1000) = Σ p_j² se_j² (1 + ln r_j − T')² / μ²;
    CI = TI ± 1.96·se (se also ×1000). No interval when an estimate is 0 (ln 0).
    """
    p = _shares(data)
    y = _estimates(data)
    mean = float(p @ y)
    r = y / mean
    positive = r > 0
    log_r = np.log(np.where(positive, r, 1.0))
    ti = float(p @ np.where(positive, r * log_r, 0.0)) * THEIL_FACTOR
    if not data.has_se or not positive.all():
        return MeasureResult(ti, None, None, None)
    se = np.array([s.se for s in data.subgroups], dtype=np.float64)
    t_prime = float(p @ (r * (1 + log_r)))
    var = float(np.sum(p**2 * se**2 * (1 + log_r - t_prime) ** 2)) / mean**2
    return _result(ti, math.sqrt(var) * THEIL_FACTOR, options.z, CIMethod.ANALYTIC)


# --------------------------------------------------------------------------------------------
# Impact measures


def _impact(data: DimensionData, options: ComputeOptions) -> tuple[Subgroup, float]:
    """The reference point of PAF/PAR and the setting mean μ.

    Reference (HEAT technical notes; HEAT-Measures ``calc_par``/``calc_paf``): the reference
    subgroup of a non-ordered dimension that has one (``options.impact_reference`` "heat", the
    default), else the most-advantaged subgroup of an ordered dimension and the best-performing
    subgroup of a non-ordered one (highest estimate if favourable, lowest if adverse). With
    ``impact_reference`` "best" a reference subgroup is ignored, as healthequal 1.0's
    ``paf``/``parisk`` do (they take no reference argument).
    """
    reference = data.reference
    if not data.ordered and reference is not None and options.impact_reference == "heat":
        ref = reference
    elif data.ordered:
        ref = max(data.subgroups, key=_order)
    elif data.favourable:
        ref = max(data.subgroups, key=lambda s: s.estimate)
    else:
        ref = min(data.subgroups, key=lambda s: s.estimate)
    mean = _setting_mean(data)
    assert mean is not None  # guaranteed by not_applicable_reason
    return ref, mean


def _walter_se(data: DimensionData, ref: Subgroup, mean: float) -> float | None:
    """se of PAF as a fraction (Walter SD 1978, Int J Epidemiol 7:175, eq. for the attributable
    risk from a 2×2 table), the table built from the populations as healthequal does: c events
    in the reference subgroup, a in the rest, d and b non-events; N the total population.

    Meaningful only when populations are counts and the indicator a proportion of ``scale``.
    """
    if not data.has_population or ref.population is None:
        return None
    total = float(sum(s.population for s in data.subgroups if s.population is not None))
    n_ref = ref.population
    c = ref.estimate / data.scale * n_ref
    d = n_ref - c
    a = mean / data.scale * total - c
    b = total - a - n_ref
    if min(a, b, c, d) < 0 or a + c <= 0 or c + d <= 0:
        return None
    var = c * total * (a * d * (total - c) + b * c**2) / ((a + c) ** 3 * (c + d) ** 3)
    return math.sqrt(var) if var >= 0 else None


def _cap(value: float, favourable: bool) -> float:
    """HEAT sets PAF and PAR to 0 when the reference is worse than the setting average: no
    improvement is possible. The cap is monotone, so it also maps the CI bounds."""
    return max(value, 0.0) if favourable else min(value, 0.0)


def _capped(value: float, se: float | None, favourable: bool, z: float) -> MeasureResult:
    estimate = _cap(value, favourable)
    if se is None:
        return MeasureResult(estimate, None, None, None)
    return MeasureResult(
        estimate,
        se,
        _cap(estimate - z * se, favourable),
        _cap(estimate + z * se, favourable),
        CIMethod.ANALYTIC,
    )


def _paf(data: DimensionData, options: ComputeOptions) -> MeasureResult:
    """Population attributable fraction PAF = 100 · (y_ref − μ) / μ (HEAT technical notes;
    Schlotheuber & Hosseinpoor 2022, §3.2.3), set to 0 when negative for a favourable indicator
    or positive for an adverse one. y_ref is the reference point of :func:`_impact` (a
    non-ordered dimension's reference subgroup by default). se = 100 · se_Walter (see
    :func:`_walter_se`).
    """
    ref, mean = _impact(data, options)
    se = _walter_se(data, ref, mean)
    return _capped(
        PERCENT * (ref.estimate - mean) / mean,
        None if se is None else PERCENT * se,
        data.favourable,
        options.z,
    )


def _par(data: DimensionData, options: ComputeOptions) -> MeasureResult:
    """Population attributable risk PAR = y_ref − μ (HEAT technical notes), capped at 0 like PAF.

    PAR = μ · PAF/100, so se(PAR) = μ · se_Walter (healthequal's published values agree).
    """
    ref, mean = _impact(data, options)
    se = _walter_se(data, ref, mean)
    return _capped(
        ref.estimate - mean,
        None if se is None else abs(mean) * se,
        data.favourable,
        options.z,
    )


# --------------------------------------------------------------------------------------------
# Measures with simulated intervals


def _simulated(measure: Measure, data: DimensionData, options: ComputeOptions) -> MeasureResult:
    """Point estimate and parametric-bootstrap CI of BGSD, COV, IDIS and the mean differences.

    Formulas (HEAT technical notes; Harper & Lynch 2005; Pearcy & Keppel 2002 for IDIS), with
    p_j population shares, n subgroups, μ the setting mean, y_best the highest (favourable) or
    lowest (adverse) estimate, y_ref the reference subgroup:

    * BGSD = √BGV; COV = 100 · BGSD / μ
    * MDBU = Σ |y_j − y_best| / n; MDBW = Σ p_j |y_j − y_best|
    * MDMU = Σ |y_j − μ| / n;      MDMW = Σ p_j |y_j − μ|
    * MDRU = Σ |y_j − y_ref| / n;  MDRW = Σ p_j |y_j − y_ref|
    * IDISU = 100 · MDMU / μ;      IDISW = 100 · MDMW / μ

    CI (HEAT technical notes; Ahn et al. 2019, PLoS One 14:e0219542): each subgroup estimate is
    drawn ``options.simulations`` times from N(y_j, se_j²) truncated to the indicator's range
    (≥ 0, and ≤ 100 for percentages), the measure is recomputed on each simulated data set (μ,
    y_best and y_ref recomputed too), and the CI is the 2.5th-97.5th percentile range. The
    random generator is seeded with ``options.seed``: the same data give the same interval.
    """
    y = _estimates(data)
    estimate = float(_evaluate(measure, data, y[None, :])[0])
    if not data.has_se:
        return MeasureResult(estimate, None, None, None)
    se = np.array([s.se for s in data.subgroups], dtype=np.float64)
    draws = _truncated_normal_draws(y, se, data.scale, options.simulations, options.seed)
    values = _evaluate(measure, data, draws)
    values = values[np.isfinite(values)]
    if values.size < 2:
        return MeasureResult(estimate, None, None, None)
    tail = (1.0 - options.confidence) / 2.0
    lb, ub = np.quantile(values, [tail, 1.0 - tail])
    return MeasureResult(
        estimate, float(np.std(values, ddof=1)), float(lb), float(ub), CIMethod.SIMULATION
    )


def _truncated_normal_draws(
    mean: FloatArray, se: FloatArray, scale: float, draws: int, seed: int
) -> FloatArray:
    """``draws`` × k draws of N(mean_j, se_j²) truncated by rejection to [0, upper].

    Indicators are non-negative; percentages (scale 100) are also bounded by 100 (HEAT and
    healthequal truncate the same way). An estimate already outside the bounds widens them for
    its subgroup, so that a zero standard error reproduces the estimate.
    """
    rng = np.random.default_rng(seed)
    lower = np.minimum(0.0, mean)
    upper = np.maximum(scale, mean) if scale == PERCENT else np.full_like(mean, np.inf)
    shape = (draws, mean.size)
    full_mean = np.broadcast_to(mean, shape)
    full_se = np.broadcast_to(se, shape)
    out = rng.normal(full_mean, full_se)
    for _ in range(1000):
        bad = (out < lower) | (out > upper)
        if not bad.any():
            break
        out[bad] = rng.normal(full_mean[bad], full_se[bad])
    # A subgroup whose estimate sits many standard errors outside its range would loop for
    # ever; the clip only ever touches such pathological input.
    return np.asarray(np.clip(out, lower, upper), dtype=np.float64)


def _evaluate(measure: Measure, data: DimensionData, y: FloatArray) -> FloatArray:
    """The simulated measure on each row of ``y`` (rows: data sets, columns: subgroups)."""
    n = y.shape[1]
    p = _shares(data) if data.has_population else np.full(n, 1.0 / n)
    # Without populations the reported setting average is the only μ: it does not vary.
    mean = y @ p if data.has_population else np.full(y.shape[0], float(data.setting_average or 0.0))
    if measure in (Measure.BGSD, Measure.COV):
        bgsd = np.sqrt(((y - mean[:, None]) ** 2) @ p)
        return np.asarray(bgsd if measure is Measure.BGSD else PERCENT * bgsd / mean)
    if measure in (Measure.MDBU, Measure.MDBW):
        best = y.max(axis=1) if data.favourable else y.min(axis=1)
        gaps = np.abs(y - best[:, None])
    elif measure in (Measure.MDRU, Measure.MDRW):
        ref = next(i for i, s in enumerate(data.subgroups) if s.is_reference)
        gaps = np.abs(y - y[:, ref : ref + 1])
    else:  # MDMU, MDMW, IDISU, IDISW
        gaps = np.abs(y - mean[:, None])
    weighted = measure in (Measure.MDBW, Measure.MDRW, Measure.MDMW, Measure.IDISW)
    md = gaps @ p if weighted else gaps.mean(axis=1)
    if measure in (Measure.IDISU, Measure.IDISW):
        return np.asarray(PERCENT * md / mean)
    return np.asarray(md)


_ANALYTIC = {
    Measure.D: _difference,
    Measure.R: _ratio,
    Measure.ACI: _aci,
    Measure.RCI: _rci,
    Measure.SII: _sii,
    Measure.RII: _rii,
    Measure.BGV: _bgv,
    Measure.MLD: _mld,
    Measure.TI: _theil,
    Measure.PAF: _paf,
    Measure.PAR: _par,
}


# -- percentages of persons: the care programmes', mental health's and referrals' indicators ----


def percentage_subgroup(name: str, percent: float, denominator: int, ordered: bool) -> Subgroup:
    """A subgroup of an indicator measured as a percentage of ``denominator`` persons, with
    its binomial standard error; ordered by its name (quintile 1..5) on an ordered dimension."""
    return Subgroup(
        name,
        percent,
        (percent * (100 - percent) / denominator) ** 0.5,
        float(denominator),
        int(name) if ordered and name.isdigit() else None,
    )


def difference_and_ratio(
    subgroups: Sequence[Subgroup], ordered: bool
) -> tuple[float | str | None, float | str | None]:
    """HEAT's difference and ratio of a favourable percentage indicator, rounded to three
    places: (None, None) with fewer than two subgroups or an ordered dimension missing an order;
    "not applicable: ..." where the engine refuses the measure."""
    if len(subgroups) < 2 or (ordered and any(s.order is None for s in subgroups)):
        return None, None
    data = DimensionData(tuple(subgroups), favourable=True, scale=100, ordered=ordered)
    out: list[float | str | None] = []
    for m in (Measure.D, Measure.R):
        try:
            out.append(round(compute(data, m).estimate, 3))
        except NotApplicableError as err:
            out.append(f"not applicable: {err}")
    return out[0], out[1]
