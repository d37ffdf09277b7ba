"""WHO HEAT summary measures of health inequality (takamul.equity).

Published reference values come from the WHO's healthequal R package (Antiporta, Menéndez,
Kirkby, Hosseinpoor; WHO 2024):

* its test suite, https://github.com/WHOequity/healthequal/tree/main/tests/testthat
  (test-aci.R, test-rci.R, test-sii.R, test-rii.R, test-paf.R, test-parisk.R, test-bgv.R,
  test-bgsd.R, test-idisu.R, test-idisw.R, test-mdbu.R, test-mdbw.R, test-mdmu.R, test-mdmw.R,
  test-mdru.R, test-mdrw.R, test-mld.R, test-ti.R, test-paf-nonordered.R,
  test-par-nonordered.R). The test data are drawn in R with ``set.seed(123)``; the values in
  ``tests/data/equity/healthequal_samples.csv`` were regenerated with R 4.2.2 from the same
  lines of R (``pop <- round(rnorm(5, 100, 40))`` for the ordered data; ``pop <-
  round(rnorm(25, 1000, 300)); est <- rbinom(25, 1000, .065); se <- rbinom(25, 100, .045);
  ref[sample(25, 1)] <- 1`` for the non-ordered data);
* its vignette, https://whoequity.github.io/healthequal/articles/healthequal-package-demo.html
  (ACI of the ``OrderedSample`` data set, whose five rows are printed in full at
  https://whoequity.github.io/healthequal/reference/OrderedSample.html).

and the reference pages of healthequal 1.0.1 (https://whoequity.github.io/healthequal/reference/,
the examples of ``aci``, ``rci``, ``sii``, ``rii``, ``paf`` and ``parisk`` on ``OrderedSample``).

Every one of these published values is in ``tests/data/equity/who_published_values.csv``, with
the input of each published call in ``who_published_inputs.csv``;
:func:`test_defaults_reproduce_every_published_value` checks them all against the command's
defaults.

healthequal reports some standard errors on another scale than the estimate (SII: proportion
scale; RII: log scale; PAF: fraction; TI and MLD: not multiplied by 1000). Here every ``se`` is
on the scale of its estimate, so the tests convert before comparing.
"""

from __future__ import annotations

import csv
import math
from dataclasses import replace
from pathlib import Path
from statistics import NormalDist

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from takamul.equity.cli import equity_app
from takamul.equity.heat import (
    OUTPUT_COLUMNS,
    TEMPLATE_COLUMNS,
    GroupKey,
    Template,
    TemplateError,
    compute_rows,
    parse_template,
    read_template,
    write_measures,
)
from takamul.equity.measures import (
    ANY_DIMENSION,
    CI_METHOD,
    NON_ORDERED_ONLY,
    ORDERED_ONLY,
    SIMULATED,
    CIMethod,
    ComputeOptions,
    DimensionData,
    Measure,
    MeasureResult,
    NotApplicableError,
    Subgroup,
    all_measures,
    applicable,
    compute,
    not_applicable_reason,
)

DATA = Path(__file__).parent / "data" / "equity" / "healthequal_samples.csv"
Z = NormalDist().inv_cdf(0.975)
# The conventions that are not the WHO's defaults (see ComputeOptions).
POPULATION_WEIGHTS = ComputeOptions(sii_weighting="population")
BEST_SUBGROUP = ComputeOptions(impact_reference="best")
# Few draws keep the simulated intervals cheap where only their presence matters.
FAST = ComputeOptions(simulations=200)


def _groups() -> dict[str, DimensionData]:
    template = read_template(DATA)
    return {g.key.indicator_abbr: g.data for g in template.groups}


@pytest.fixture(scope="module")
def samples() -> dict[str, DimensionData]:
    return _groups()


def _without_reference(data: DimensionData) -> DimensionData:
    """The same subgroups with no reference subgroup: healthequal's ``paf`` and ``parisk`` take
    no reference argument, so their published calls are this input."""
    return replace(data, subgroups=tuple(replace(s, is_reference=False) for s in data.subgroups))


def dim(
    estimates: list[float],
    *,
    se: list[float] | None = None,
    population: list[float] | None = None,
    ordered: bool = False,
    favourable: bool = True,
    reference: int | None = None,
    scale: float = 100.0,
    setting_average: float | None = None,
) -> DimensionData:
    """A dimension from lists; ordered subgroups are ranked in list order (first = poorest)."""
    return DimensionData(
        subgroups=tuple(
            Subgroup(
                name=f"g{i + 1}",
                estimate=float(y),
                se=None if se is None else float(se[i]),
                population=None if population is None else float(population[i]),
                order=i + 1 if ordered else None,
                is_reference=reference == i,
            )
            for i, y in enumerate(estimates)
        ),
        favourable=favourable,
        scale=scale,
        ordered=ordered,
        setting_average=setting_average,
    )


# ---------------------------------------------------------------------------------------------
# Every published value, through ``takamul equity measures`` with its defaults

PUBLISHED_INPUTS = DATA.parent / "who_published_inputs.csv"
PUBLISHED_VALUES = DATA.parent / "who_published_values.csv"


def _as_reported(row: dict[str, str], ours: dict[str, str]) -> float:
    """Our output on the scale the WHO published it (see ``reported_as`` in the values file):
    healthequal gives some standard errors on another scale than the estimate, and builds the
    intervals of PAF, TI and MLD from the estimate and that unscaled standard error."""
    field, how = row["field"], row["reported_as"]
    estimate, se = float(ours["estimate"]), float(ours["se"] or "nan")
    if how == "value":
        return float(ours[field])
    if how == "se_per_100":
        return se / 100
    if how == "se_per_1000":
        return se / 1000
    if how == "se_of_log":
        return se / estimate
    sign = -1.0 if field == "ci_lb" else 1.0
    if how == "ci_with_se_per_100":
        return estimate + sign * Z * se / 100
    if how == "ci_with_se_per_1000":
        return estimate + sign * Z * se / 1000
    raise AssertionError(f"unknown reported_as {how!r}")


def test_defaults_reproduce_every_published_value(tmp_path: Path) -> None:
    # The WHO's published test and example data (healthequal's test suite, reference pages and
    # vignette), each call's input as a HEAT Plus template group, run through the command with
    # no option: the defaults must give the WHO's numbers (issue 11, finding 6).
    out = tmp_path / "measures.csv"
    result = CliRunner().invoke(equity_app, ["measures", str(PUBLISHED_INPUTS), "--out", str(out)])
    assert result.exit_code == 0, result.output
    with out.open(encoding="utf-8") as handle:
        ours = {(r["indicator_abbr"], r["measure"]): r for r in csv.DictReader(handle)}
    with PUBLISHED_VALUES.open(encoding="utf-8") as handle:
        published = list(csv.DictReader(handle))
    assert len(published) == 77
    wrong = []
    for row in published:
        key = (row["indicator_abbr"], row["measure"])
        if key not in ours:
            wrong.append(f"{key}: not computed")
            continue
        got = _as_reported(row, ours[key])
        expected = float(row["published"])
        if not math.isclose(got, expected, rel_tol=float(row["rel_tol"])):
            wrong.append(f"{key} {row['field']}: {got:.8g}, published {expected:.8g}")
    assert wrong == [], f"{len(wrong)} of {len(published)} published values differ: {wrong}"


# ---------------------------------------------------------------------------------------------
# Published values: ordered dimension (healthequal tests, set.seed(123) data)


def test_aci_matches_healthequal_test(samples: dict[str, DimensionData]) -> None:
    # test-aci.R: expected_aci <- 7.3284202; expected_se <- .29368517
    r = compute(samples["ordered"], Measure.ACI)
    assert r.estimate == pytest.approx(7.3284202, rel=1e-6)
    assert r.se is not None
    assert r.se == pytest.approx(0.29368517, rel=1e-6)
    assert (r.ci_lb, r.ci_ub) == pytest.approx((r.estimate - Z * r.se, r.estimate + Z * r.se))


def test_rci_matches_healthequal_test(samples: dict[str, DimensionData]) -> None:
    # test-rci.R: .17776859, se .0071240491, CI 0.16380545 to 0.19173172
    r = compute(samples["ordered"], Measure.RCI)
    assert r.estimate == pytest.approx(0.17776859, rel=1e-6)
    assert r.se == pytest.approx(0.0071240491, rel=1e-5)
    assert r.ci_lb == pytest.approx(0.16380545, rel=1e-4)
    assert r.ci_ub == pytest.approx(0.19173172, rel=1e-4)


def test_sii_matches_healthequal_test(samples: dict[str, DimensionData]) -> None:
    # test-sii.R: 44.44502, se 0.02190822 (on the 0-1 scale), CI 40.15109 to 48.73895
    r = compute(samples["ordered"], Measure.SII)
    assert r.estimate == pytest.approx(44.44502, rel=1e-6)
    assert r.se is not None
    assert r.se / 100 == pytest.approx(0.02190822, rel=1e-6)
    assert r.ci_lb == pytest.approx(40.15109, rel=1e-6)
    assert r.ci_ub == pytest.approx(48.73895, rel=1e-6)


def test_rii_matches_healthequal_test(samples: dict[str, DimensionData]) -> None:
    # test-rii.R: 3.159506, se 0.07644001 (of ln RII), CI 2.719902 to 3.67016
    r = compute(samples["ordered"], Measure.RII)
    assert r.estimate == pytest.approx(3.159506, rel=1e-6)
    assert r.se is not None
    assert r.se / r.estimate == pytest.approx(0.07644001, rel=1e-6)
    assert r.ci_lb == pytest.approx(2.719902, rel=1e-6)
    assert r.ci_ub == pytest.approx(3.67016, rel=1e-6)


def test_sii_population_weighting_is_an_option(samples: dict[str, DimensionData]) -> None:
    # The option weights subgroups by population share (each person once, not population² as
    # HEAT does): the values issue 11 found under the old default, 44.89 and 3.236.
    sii = compute(samples["ordered"], Measure.SII, POPULATION_WEIGHTS)
    rii = compute(samples["ordered"], Measure.RII, POPULATION_WEIGHTS)
    assert sii.estimate == pytest.approx(44.8905, rel=1e-5)
    assert rii.estimate == pytest.approx(3.23634, rel=1e-5)
    # healthequal's name for HEAT's weighting is still accepted, and is the default.
    alias = ComputeOptions(sii_weighting="healthequal")  # type: ignore[arg-type]
    assert alias.sii_weighting == "heat"
    assert compute(samples["ordered"], Measure.SII, alias) == compute(
        samples["ordered"], Measure.SII
    )
    with pytest.raises(ValueError, match="sii_weighting"):
        ComputeOptions(sii_weighting="people")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="impact_reference"):
        ComputeOptions(impact_reference="worst")  # type: ignore[arg-type]


def test_sii_heat_weighting_rounds_to_whole_people(samples: dict[str, DimensionData]) -> None:
    # healthequal's OrderedSample has populations such as 2072.436: HEAT counts whole people
    # (rounded up) for the ranks as well as for the trials, which is what gives the published
    # 31.61763 (ranks on the unrounded shares would give 31.6192).
    r = compute(samples["sba"], Measure.SII)
    assert r.estimate == pytest.approx(31.61763, rel=1e-6)
    # Shares are not people: HEAT's weighting refuses them rather than rounding 0.2 up to 1.
    shares = dim([20.0, 30.0, 40.0], population=[0.2, 0.3, 0.5], ordered=True)
    assert not_applicable_reason(Measure.SII, shares) == (
        "HEAT's SII/RII weighting needs populations as numbers of people (at least 1); "
        "for population shares use sii_weighting 'population'"
    )
    assert compute(shares, Measure.SII, POPULATION_WEIGHTS).estimate > 0
    assert Measure.SII in all_measures(shares, replace(POPULATION_WEIGHTS, simulations=2))
    assert Measure.SII not in all_measures(shares, ComputeOptions(simulations=2))


def test_paf_par_ordered_match_healthequal_tests(samples: dict[str, DimensionData]) -> None:
    # test-paf.R: 45.544548, se .10689361 (fraction scale); test-parisk.R: 18.775509, se 4.4066348
    paf = compute(samples["ordered"], Measure.PAF)
    assert paf.estimate == pytest.approx(45.544548, rel=1e-6)
    assert paf.se is not None
    assert paf.se / 100 == pytest.approx(0.10689361, rel=1e-6)
    par = compute(samples["ordered"], Measure.PAR)
    assert par.estimate == pytest.approx(18.775509, rel=1e-6)
    assert par.se == pytest.approx(4.4066348, rel=1e-6)


def test_aci_matches_healthequal_vignette(samples: dict[str, DimensionData]) -> None:
    # Vignette: aci(OrderedSample) = 4.30052, se 1.284031, CI 1.783865 to 6.817174
    r = compute(samples["sba"], Measure.ACI)
    assert r.estimate == pytest.approx(4.30052, rel=1e-6)
    assert r.se == pytest.approx(1.284031, rel=1e-6)
    assert r.ci_lb == pytest.approx(1.783865, rel=1e-6)
    assert r.ci_ub == pytest.approx(6.817174, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Published values: non-ordered dimension (healthequal tests, set.seed(123) data)


@pytest.mark.parametrize(
    ("measure", "published"),
    [
        (Measure.BGV, 46.198326),  # test-bgv.R
        (Measure.BGSD, 6.7969351),  # test-bgsd.R
        (Measure.IDISU, 8.7018175),  # test-idisu.R
        (Measure.IDISW, 8.6178417),  # test-idisw.R
        (Measure.MDBU, 16.360001),  # test-mdbu.R
        (Measure.MDBW, 16.293156),  # test-mdbw.R
        (Measure.MDMU, 5.891726),  # test-mdmu.R
        (Measure.MDMW, 5.8348689),  # test-mdmw.R
        (Measure.MDRU, 7.2399998),  # test-mdru.R
        (Measure.MDRW, 7.2228465),  # test-mdrw.R
        (Measure.MLD, 5.0524006),  # test-mld.R (×1000)
        (Measure.TI, 5.0359201),  # test-ti.R (×1000)
        (Measure.PAF, 24.06426),  # test-paf-nonordered.R
        (Measure.PAR, 16.293152),  # test-par-nonordered.R
    ],
)
def test_non_ordered_match_healthequal_tests(
    samples: dict[str, DimensionData], measure: Measure, published: float
) -> None:
    # healthequal's own tests accept 1e-4 relative error; the published MLD and TI differ from
    # the formula in the 5th digit, everything else in the 7th. Only MDRU and MDRW were called
    # with the reference subgroup.
    data = samples["nonordered"]
    if measure not in (Measure.MDRU, Measure.MDRW):
        data = _without_reference(data)
    r = compute(data, measure, FAST)
    assert r.estimate == pytest.approx(published, rel=2e-5)


@pytest.mark.parametrize(
    ("measure", "published_se", "factor"),
    [
        (Measure.BGV, 17.134647, 1.0),  # test-bgv.R
        (Measure.MLD, 0.0014242, 1000.0),  # test-mld.R (se not multiplied by 1000 there)
        (Measure.TI, 0.0014201, 1000.0),  # test-ti.R (idem)
        (Measure.PAF, 0.01771526, 100.0),  # test-paf-nonordered.R (se of the fraction)
        (Measure.PAR, 1.1994447, 1.0),  # test-par-nonordered.R
    ],
)
def test_non_ordered_se_match_healthequal_tests(
    samples: dict[str, DimensionData], measure: Measure, published_se: float, factor: float
) -> None:
    r = compute(_without_reference(samples["nonordered"]), measure)
    assert r.se is not None
    assert r.se / factor == pytest.approx(published_se, rel=1e-4)
    assert r.ci_method is CIMethod.ANALYTIC


def test_par_nonordered_ci_matches_healthequal(samples: dict[str, DimensionData]) -> None:
    # test-par-nonordered.R: CI 13.94224 to 18.644063
    r = compute(_without_reference(samples["nonordered"]), Measure.PAR)
    assert (r.ci_lb, r.ci_ub) == pytest.approx((13.94224, 18.644063), rel=1e-5)
    # The same data with healthequal's ``ref`` as the reference subgroup (Region 14, 62%, below
    # the mean): HEAT compares with the reference, which no subgroup needs to reach, so 0;
    # the "best" option gives healthequal's value whatever the reference.
    assert compute(samples["nonordered"], Measure.PAR).estimate == 0.0
    best = compute(samples["nonordered"], Measure.PAR, BEST_SUBGROUP)
    assert best.estimate == pytest.approx(16.293152, rel=2e-5)


# The first rows of healthequal's NonorderedSample (births attended by skilled personnel by
# Indonesian province), as its reference pages print them; Aceh is its reference subgroup and
# 91.59669 the setting average. Without populations, μ is the setting average.
NONORDERED_SAMPLE_HEAD = (
    ("aceh", "95.11784", "1.5384434", "1"),
    ("bali", "100", "0", "0"),
    ("bangka balitung", "97.41001", "1.2676437", "0"),
    ("banten", "80.35694", "3.5440531", "0"),
    ("bengkulu", "94.25756", "2.7740061", "0"),
    ("central java", "98.56168", "0.6476116", "0"),
)


def test_paf_par_non_ordered_use_the_reference_subgroup(tmp_path: Path) -> None:
    # Issue 11, finding 6: HEAT's PAR with the reference subgroup is 95.11784 − 91.59669 =
    # 3.52 (the HEAT technical notes' rule); against the best subgroup (Bali, 100%) it is 8.40.
    rows = [
        _row(
            setting="Indonesia",
            dimension="Subnational region",
            subgroup=name,
            estimate=estimate,
            se=se,
            population="",
            setting_average="91.59669",
            reference_subgroup=reference,
        )
        for name, estimate, se, reference in NONORDERED_SAMPLE_HEAD
    ]
    path = tmp_path / "nonordered-sample.csv"
    path.write_text(_template(rows), encoding="utf-8")

    def run(*options: str) -> dict[str, float]:
        out = tmp_path / "out.csv"
        result = CliRunner().invoke(
            equity_app, ["measures", str(path), "--out", str(out), *options]
        )
        assert result.exit_code == 0, result.output
        return {r["measure"]: float(r["estimate"]) for r in csv.DictReader(out.open())}

    default = run()
    assert default["par"] == pytest.approx(95.11784 - 91.59669, rel=1e-9)  # 3.52115
    assert default["paf"] == pytest.approx(100 * 3.52115 / 91.59669, rel=1e-6)  # 3.844
    best = run("--impact-reference", "best")
    assert best["par"] == pytest.approx(100 - 91.59669, rel=1e-9)  # 8.40331
    assert best["paf"] == pytest.approx(100 * 8.40331 / 91.59669, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Hand-computed values (no published value: D, R, COV and the small-data cases)


def test_difference_and_ratio_by_hand_on_ordered_sample(samples: dict[str, DimensionData]) -> None:
    # Favourable indicator, ordered: D = Q5 − Q1 = 99.22405 − 75.60530 = 23.61875;
    # se = √(0.2237683² + 1.5996131²) = √(0.05007225 + 2.55876207) = √2.60883432 = 1.6151886
    d = compute(samples["sba"], Measure.D)
    assert d.estimate == pytest.approx(23.61875, rel=1e-9)
    assert d.se == pytest.approx(1.6151886, rel=1e-7)
    assert d.ci_lb == pytest.approx(23.61875 - Z * 1.6151886, rel=1e-7)
    # R = 99.22405 / 75.60530 = 1.3123954; se(ln R) = √((0.2237683/99.22405)² +
    # (1.5996131/75.60530)²) = √(5.08585e-6 + 4.476356e-4) = 0.02127727
    r = compute(samples["sba"], Measure.R)
    assert r.estimate == pytest.approx(1.3123954, rel=1e-7)
    assert r.se is not None
    assert r.se / r.estimate == pytest.approx(0.02127727, rel=1e-6)
    assert r.ci_lb == pytest.approx(1.3123954 * math.exp(-Z * 0.02127727), rel=1e-6)


SMALL = [10.0, 20.0, 30.0]
SMALL_POP = [100.0, 100.0, 200.0]  # shares 0.25, 0.25, 0.5


def test_small_non_ordered_by_hand() -> None:
    # μ = 0.25·10 + 0.25·20 + 0.5·30 = 22.5
    data = dim(SMALL, population=SMALL_POP, reference=1)
    got = {m: r.estimate for m, r in all_measures(data, FAST).items()}
    bgv = 0.25 * 12.5**2 + 0.25 * 2.5**2 + 0.5 * 7.5**2  # = 68.75
    assert got[Measure.BGV] == pytest.approx(68.75) == pytest.approx(bgv)
    assert got[Measure.BGSD] == pytest.approx(math.sqrt(68.75))  # 8.2916
    assert got[Measure.COV] == pytest.approx(100 * math.sqrt(68.75) / 22.5)  # 36.85
    assert got[Measure.D] == pytest.approx(30 - 20)  # reference 20 minus the lowest other, 10
    assert got[Measure.R] == pytest.approx(20 / 10)
    assert got[Measure.MDBU] == pytest.approx((20 + 10 + 0) / 3)  # best is 30
    assert got[Measure.MDBW] == pytest.approx(0.25 * 20 + 0.25 * 10)
    assert got[Measure.MDMU] == pytest.approx((12.5 + 2.5 + 7.5) / 3)  # 7.5
    assert got[Measure.MDMW] == pytest.approx(0.25 * 12.5 + 0.25 * 2.5 + 0.5 * 7.5)  # 7.5
    assert got[Measure.IDISU] == pytest.approx(100 * 7.5 / 22.5)
    assert got[Measure.IDISW] == pytest.approx(100 * 7.5 / 22.5)
    assert got[Measure.MDRU] == pytest.approx((10 + 0 + 10) / 3)  # reference is 20
    assert got[Measure.MDRW] == pytest.approx(0.25 * 10 + 0.5 * 10)
    r = [10 / 22.5, 20 / 22.5, 30 / 22.5]
    ti = 0.25 * r[0] * math.log(r[0]) + 0.25 * r[1] * math.log(r[1]) + 0.5 * r[2] * math.log(r[2])
    mld = -(0.25 * math.log(r[0]) + 0.25 * math.log(r[1]) + 0.5 * math.log(r[2]))
    assert got[Measure.TI] == pytest.approx(1000 * ti)  # 75.51
    assert got[Measure.MLD] == pytest.approx(1000 * mld)  # 88.34
    # PAR and PAF compare the reference subgroup (20) with the mean: no improvement, so 0;
    # against the best-performing subgroup (the "best" option) 30 − 22.5.
    assert got[Measure.PAR] == 0.0
    assert got[Measure.PAF] == 0.0
    best = all_measures(data, replace(BEST_SUBGROUP, simulations=2))
    assert best[Measure.PAR].estimate == pytest.approx(30 - 22.5)
    assert best[Measure.PAF].estimate == pytest.approx(100 * 7.5 / 22.5)
    # Without a reference subgroup both conventions take the best-performing subgroup.
    no_reference = _without_reference(data)
    assert compute(no_reference, Measure.PAR).estimate == pytest.approx(30 - 22.5)


def test_small_ordered_aci_by_hand() -> None:
    # Shares 0.25, 0.25, 0.5 → ranks 0.125, 0.375, 0.75;
    # ACI = Σ p (2X − 1) y = 0.25·(−0.75)·10 + 0.25·(−0.25)·20 + 0.5·0.5·30 = 4.375
    data = dim(SMALL, population=SMALL_POP, ordered=True)
    assert compute(data, Measure.ACI).estimate == pytest.approx(4.375)
    assert compute(data, Measure.RCI).estimate == pytest.approx(4.375 / 22.5)


# ---------------------------------------------------------------------------------------------
# Applicability rules (HEAT technical notes; HEAT Plus, Glob Health Action 2018, Table 2)


def test_rule_one_subgroup_has_no_measure() -> None:
    assert all_measures(dim([50.0], population=[1.0], se=[1.0])) == {}


def test_rule_binary_dimension_only_pairwise_and_impact() -> None:
    data = dim([40.0, 60.0], se=[1, 1], population=[1, 1], reference=0)
    assert set(all_measures(data)) == set(ANY_DIMENSION)


def test_rule_ordered_measures_need_an_ordered_dimension() -> None:
    ordered = dim(SMALL, se=[1, 1, 1], population=SMALL_POP, ordered=True)
    non_ordered = dim(SMALL, se=[1, 1, 1], population=SMALL_POP, reference=0)
    assert set(all_measures(ordered, FAST)) == set(ANY_DIMENSION) | ORDERED_ONLY
    assert set(all_measures(non_ordered, FAST)) == set(ANY_DIMENSION) | NON_ORDERED_ONLY
    for m in ORDERED_ONLY:
        assert not_applicable_reason(m, non_ordered) == "applies to ordered dimensions only"
    for m in NON_ORDERED_ONLY:
        assert not_applicable_reason(m, ordered) == "applies to non-ordered dimensions only"


def test_rule_reference_measures_need_a_reference() -> None:
    data = dim(SMALL, population=SMALL_POP)
    assert not applicable(Measure.MDRU, data)
    assert not applicable(Measure.MDRW, data)
    assert applicable(Measure.MDRU, replace(data, subgroups=dim(SMALL, reference=2).subgroups))


def test_rule_weighted_measures_need_population() -> None:
    data = dim(SMALL, se=[1, 1, 1])
    for m in (Measure.BGV, Measure.MDBW, Measure.MDMW, Measure.IDISW, Measure.TI, Measure.MLD):
        assert not_applicable_reason(m, data) == "needs the population of every subgroup"
    assert applicable(Measure.MDBU, data)
    ordered = dim(SMALL, ordered=True)
    for m in ORDERED_ONLY:
        assert not applicable(m, ordered)


def test_rule_mean_measures_use_the_setting_average_without_population() -> None:
    without = dim(SMALL)
    for m in (Measure.MDMU, Measure.IDISU, Measure.PAF, Measure.PAR):
        assert not applicable(m, without)
    with_average = dim(SMALL, setting_average=25.0)
    assert compute(with_average, Measure.MDMU).estimate == pytest.approx((15 + 5 + 5) / 3)
    assert compute(with_average, Measure.PAR).estimate == pytest.approx(30 - 25)
    # With populations the population-weighted mean wins over the reported average.
    both = dim(SMALL, population=SMALL_POP, setting_average=25.0)
    assert compute(both, Measure.PAR).estimate == pytest.approx(30 - 22.5)


def test_rule_relative_measures_need_non_negative_estimates() -> None:
    data = dim([-5.0, 10.0, 20.0], population=SMALL_POP, se=[1, 1, 1])
    for m in (Measure.R, Measure.COV, Measure.IDISU, Measure.IDISW, Measure.TI, Measure.PAF):
        assert not applicable(m, data), m
    for m in (Measure.D, Measure.BGV, Measure.MDMU, Measure.PAR):
        assert applicable(m, data), m


def test_rule_mld_needs_positive_estimates_ti_allows_zero() -> None:
    data = dim([0.0, 10.0, 20.0], population=SMALL_POP, se=[1, 1, 1])
    assert not applicable(Measure.MLD, data)
    ti = compute(data, Measure.TI)
    assert ti.estimate > 0
    assert ti.ci_lb is None  # ln 0 in the variance: no interval


def test_rule_ratio_needs_a_positive_denominator() -> None:
    assert not applicable(Measure.R, dim([0.0, 10.0, 20.0]))
    assert applicable(Measure.D, dim([0.0, 10.0, 20.0]))


def test_rule_sii_needs_a_converging_regression() -> None:
    # 0% in the poorest, 100% in the richest, both outcomes in between: the subgroups are
    # quasi-separated and the logistic regression has no finite solution.
    data = dim([0.0, 50.0, 100.0], population=SMALL_POP, ordered=True)
    assert not_applicable_reason(Measure.SII, data) == (
        "the logistic regression does not converge (separated estimates)"
    )
    assert not applicable(Measure.RII, data)
    assert applicable(Measure.ACI, data)
    # Every subgroup at 100%: no inequality at all.
    flat = dim([100.0, 100.0, 100.0], population=SMALL_POP, ordered=True)
    assert compute(flat, Measure.SII).estimate == pytest.approx(0.0, abs=1e-9)


def test_rule_compute_refuses_what_does_not_apply() -> None:
    with pytest.raises(NotApplicableError, match="aci: applies to ordered dimensions only"):
        compute(dim(SMALL, population=SMALL_POP), Measure.ACI)


def test_model_rejects_inconsistent_dimension() -> None:
    with pytest.raises(ValueError, match="orders must be distinct"):
        DimensionData(
            (Subgroup("a", 1, order=1), Subgroup("b", 2, order=1)), True, 100.0, ordered=True
        )
    with pytest.raises(ValueError, match="at most one subgroup"):
        DimensionData(
            tuple(replace(s, is_reference=True) for s in dim(SMALL).subgroups), True, 100, False
        )
    with pytest.raises(ValueError, match="scale"):
        dim(SMALL, scale=0.0)


# ---------------------------------------------------------------------------------------------
# Favourable and adverse indicators


def test_difference_direction_ordered() -> None:
    # Favourable: most advantaged − most disadvantaged; adverse: the reverse.
    rising = dim([10.0, 20.0, 30.0], ordered=True)
    assert compute(rising, Measure.D).estimate == 20
    falling_adverse = dim([30.0, 20.0, 10.0], ordered=True, favourable=False)
    assert compute(falling_adverse, Measure.D).estimate == 20
    assert compute(falling_adverse, Measure.R).estimate == 3


def test_difference_direction_non_ordered() -> None:
    values = [40.0, 10.0, 30.0]
    assert compute(dim(values), Measure.D).estimate == 30  # highest − lowest
    assert compute(dim(values, favourable=False), Measure.D).estimate == 30
    # With a reference: ref − lowest other (favourable), highest other − ref (adverse).
    assert compute(dim(values, reference=2), Measure.D).estimate == 30 - 10
    assert compute(dim(values, reference=2, favourable=False), Measure.D).estimate == 40 - 30
    assert compute(dim(values, reference=2, favourable=False), Measure.R).estimate == 40 / 30
    # Binary dimension: the reference against the other subgroup.
    assert compute(dim([60.0, 50.0], reference=1), Measure.D).estimate == -10


def test_best_subgroup_depends_on_indicator_type() -> None:
    values = [10.0, 20.0, 40.0]
    assert compute(dim(values), Measure.MDBU).estimate == pytest.approx((30 + 20) / 3)
    adverse = dim(values, favourable=False)
    assert compute(adverse, Measure.MDBU).estimate == pytest.approx((10 + 30) / 3)


def test_paf_par_capped_at_zero() -> None:
    # Favourable, ordered: the most advantaged (last) is below the mean → no improvement: 0.
    worse_ref = dim([60.0, 50.0, 20.0], population=[1, 1, 1], se=[1, 1, 1], ordered=True)
    for m in (Measure.PAF, Measure.PAR):
        r = compute(worse_ref, m)
        assert r.estimate == 0.0
        assert r.ci_lb is not None and r.ci_lb >= 0.0
    # Adverse, ordered: the most advantaged is above the mean → 0 as well.
    adverse = dim([10.0, 20.0, 60.0], population=[1, 1, 1], ordered=True, favourable=False)
    assert compute(adverse, Measure.PAR).estimate == 0.0
    # Adverse, non-ordered: the best is the lowest, below the mean → negative PAF/PAR.
    adverse_no = dim([10.0, 20.0, 60.0], population=[1, 1, 1], favourable=False)
    assert compute(adverse_no, Measure.PAR).estimate == pytest.approx(10 - 30)
    assert compute(adverse_no, Measure.PAF).estimate == pytest.approx(100 * (10 - 30) / 30)


def test_paf_reference_in_ordered_dimension_is_most_advantaged() -> None:
    # The most advantaged subgroup (40) is the reference even though 50 is higher.
    data = dim([20.0, 50.0, 40.0], population=[1, 1, 1], ordered=True)
    assert compute(data, Measure.PAR).estimate == pytest.approx(40 - 110 / 3)


def test_sii_aci_sign_conventions() -> None:
    # The rank runs from the most disadvantaged (0) to the most advantaged (1) for any
    # indicator: positive SII/ACI = higher values among the advantaged.
    pop = [100.0, 100.0, 100.0, 100.0, 100.0]
    favourable = dim([20.0, 30.0, 40.0, 50.0, 60.0], population=pop, ordered=True)
    adverse = dim([60.0, 50.0, 40.0, 30.0, 20.0], population=pop, ordered=True, favourable=False)
    for m in (Measure.SII, Measure.ACI, Measure.RCI):
        assert compute(favourable, m).estimate > 0
        assert compute(adverse, m).estimate < 0
    assert compute(favourable, Measure.RII).estimate > 1
    assert compute(adverse, Measure.RII).estimate < 1
    # Mirrored data give mirrored measures.
    assert compute(adverse, Measure.SII).estimate == pytest.approx(
        -compute(favourable, Measure.SII).estimate
    )
    assert compute(adverse, Measure.ACI).estimate == pytest.approx(
        -compute(favourable, Measure.ACI).estimate
    )


def test_sii_falls_back_to_linear_for_unbounded_indicators() -> None:
    # Estimates above the scale (e.g. a mean on scale 1): weighted linear regression, whose
    # slope with equal populations and equally spaced ranks is (60 − 20)/(0.9 − 0.1)·1.
    data = dim([20.0, 30.0, 40.0, 50.0, 60.0], population=[1] * 5, ordered=True, scale=1.0)
    assert compute(data, Measure.SII).estimate == pytest.approx(50.0)
    assert compute(data, Measure.RII).estimate == pytest.approx(65.0 / 15.0)


# ---------------------------------------------------------------------------------------------
# Confidence interval methods


def test_ci_method_table() -> None:
    assert set(CI_METHOD) == set(Measure)
    assert {m for m, c in CI_METHOD.items() if c is CIMethod.REGRESSION} == ORDERED_ONLY
    assert {
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
    } == SIMULATED


def test_each_result_reports_its_ci_method(samples: dict[str, DimensionData]) -> None:
    for data in samples.values():
        for m, r in all_measures(data, FAST).items():
            assert r.ci_method is CI_METHOD[m], m
            assert r.ci_lb is not None and r.ci_ub is not None
            assert r.ci_lb <= r.ci_ub


def test_analytic_intervals_are_normal_or_log_normal(samples: dict[str, DimensionData]) -> None:
    data = samples["nonordered"]
    for m in (Measure.D, Measure.BGV, Measure.MLD, Measure.TI):
        r = compute(data, m)
        assert r.se is not None
        assert (r.ci_lb, r.ci_ub) == pytest.approx((r.estimate - Z * r.se, r.estimate + Z * r.se))
    for m, d in ((Measure.R, data), (Measure.RII, samples["ordered"])):
        r = compute(d, m)
        assert r.ci_lb is not None and r.ci_ub is not None
        assert math.log(r.ci_ub / r.estimate) == pytest.approx(math.log(r.estimate / r.ci_lb))


def test_simulated_intervals_repeat_with_the_seed(samples: dict[str, DimensionData]) -> None:
    data = samples["nonordered"]
    first = compute(data, Measure.MDMW, FAST)
    again = compute(data, Measure.MDMW, FAST)
    other = compute(data, Measure.MDMW, replace(FAST, seed=7))
    assert first == again
    assert (first.ci_lb, first.ci_ub) != (other.ci_lb, other.ci_ub)
    assert first.ci_method is CIMethod.SIMULATION


def test_simulated_interval_collapses_without_sampling_error() -> None:
    data = dim([10.0, 20.0, 40.0], se=[0, 0, 0], population=SMALL_POP)
    for m in SIMULATED - {Measure.MDRU, Measure.MDRW}:
        r = compute(data, m, FAST)
        assert (r.ci_lb, r.ci_ub) == pytest.approx((r.estimate, r.estimate)), m


def test_simulated_draws_respect_the_percentage_range() -> None:
    # A subgroup at 99.5% with a large se: draws above 100 are rejected, so the best subgroup
    # never exceeds 100 and MDBU's upper bound stays below what unbounded draws would give.
    data = dim([99.5, 60.0, 50.0], se=[5.0, 1.0, 1.0], population=SMALL_POP)
    r = compute(data, Measure.MDBU, FAST)
    assert r.ci_ub is not None and r.ci_ub < (100 - 50 + 100 - 60) / 3 + 1


def test_missing_se_means_no_interval_where_se_is_needed() -> None:
    data = dim([20.0, 30.0, 40.0, 50.0], population=[1, 2, 3, 4], ordered=True)
    d = compute(data, Measure.D)
    assert (d.se, d.ci_lb, d.ci_ub, d.ci_method) == (None, None, None, None)
    # Regression-based intervals need no subgroup standard errors.
    assert compute(data, Measure.ACI).ci_lb is not None
    assert compute(data, Measure.SII).ci_lb is not None
    non_ordered = dim([20.0, 30.0, 40.0, 50.0], population=[1, 2, 3, 4])
    assert compute(non_ordered, Measure.BGSD).ci_lb is None
    assert compute(non_ordered, Measure.BGV).ci_lb is None


# ---------------------------------------------------------------------------------------------
# Invariants


estimates = st.lists(
    st.floats(min_value=1.0, max_value=99.0, allow_nan=False), min_size=3, max_size=8
)
populations = st.floats(min_value=1.0, max_value=5000.0, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(value=st.floats(min_value=0.5, max_value=99.5), k=st.integers(3, 7), ordered=st.booleans())
def test_equal_subgroups_mean_no_inequality(value: float, k: int, ordered: bool) -> None:
    # Population weighting: HEAT's rounds each subgroup's events to whole people, so equal
    # percentages of unequal small populations are not exactly equal proportions there.
    data = dim(
        [value] * k, se=[1.0] * k, population=[float(i + 1) for i in range(k)], ordered=ordered
    )
    results = all_measures(data, replace(POPULATION_WEIGHTS, simulations=200))
    assert results[Measure.D].estimate == 0
    assert results[Measure.R].estimate == 1
    for m, r in results.items():
        if m in (Measure.R, Measure.RII):
            assert r.estimate == pytest.approx(1.0), m
        else:
            assert r.estimate == pytest.approx(0.0, abs=1e-9), m


@settings(max_examples=40, deadline=None)
@given(ys=estimates, data=st.data())
def test_rci_is_aci_over_the_mean(ys: list[float], data: st.DataObject) -> None:
    pops = data.draw(st.lists(populations, min_size=len(ys), max_size=len(ys)))
    d = dim(ys, population=pops, ordered=True)
    mean = sum(p * y for p, y in zip(pops, ys, strict=True)) / sum(pops)
    aci = compute(d, Measure.ACI)
    rci = compute(d, Measure.RCI)
    assert rci.estimate == pytest.approx(aci.estimate / mean, rel=1e-9, abs=1e-12)
    assert rci.se == pytest.approx((aci.se or 0.0) / mean, rel=1e-9, abs=1e-12)
    assert -1 <= rci.estimate <= 1


@settings(max_examples=30, deadline=None)
@given(ys=estimates, data=st.data())
def test_non_ordered_identities(ys: list[float], data: st.DataObject) -> None:
    pops = data.draw(st.lists(populations, min_size=len(ys), max_size=len(ys)))
    d = dim(ys, population=pops, reference=0)
    r = {m: v.estimate for m, v in all_measures(d, ComputeOptions(simulations=2)).items()}
    mean = sum(p * y for p, y in zip(pops, ys, strict=True)) / sum(pops)
    assert r[Measure.BGSD] ** 2 == pytest.approx(r[Measure.BGV], rel=1e-9, abs=1e-9)
    assert r[Measure.COV] == pytest.approx(100 * r[Measure.BGSD] / mean, rel=1e-9)
    assert r[Measure.IDISU] == pytest.approx(100 * r[Measure.MDMU] / mean, rel=1e-9)
    assert r[Measure.IDISW] == pytest.approx(100 * r[Measure.MDMW] / mean, rel=1e-9)
    assert r[Measure.PAR] == pytest.approx(mean * r[Measure.PAF] / 100, rel=1e-9, abs=1e-9)
    for m in (Measure.BGV, Measure.MDBU, Measure.MDBW, Measure.MDMU, Measure.MDRU, Measure.TI):
        assert r[m] >= -1e-12, m
    assert r[Measure.MLD] >= -1e-9


@settings(max_examples=25, deadline=None)
@given(ys=estimates, data=st.data(), factor=st.floats(min_value=0.01, max_value=1000.0))
def test_population_counts_or_shares_give_the_same_measures(
    ys: list[float], data: st.DataObject, factor: float
) -> None:
    # The population weighting of SII/RII; HEAT's counts whole people, so it is not invariant.
    pops = data.draw(st.lists(populations, min_size=len(ys), max_size=len(ys)))
    options = replace(POPULATION_WEIGHTS, simulations=2)
    for ordered in (True, False):
        a = all_measures(dim(ys, population=pops, ordered=ordered), options)
        scaled = [p * factor for p in pops]
        b = all_measures(dim(ys, population=scaled, ordered=ordered), options)
        assert set(a) == set(b)
        for m in a:
            assert b[m].estimate == pytest.approx(a[m].estimate, rel=1e-6, abs=1e-9), m
            if m in (Measure.ACI, Measure.RCI, Measure.SII, Measure.RII):
                assert b[m].se == pytest.approx(a[m].se, rel=1e-6, abs=1e-9), m


@settings(max_examples=25, deadline=None)
@given(ys=estimates, data=st.data())
def test_non_ordered_measures_ignore_row_order(ys: list[float], data: st.DataObject) -> None:
    pops = data.draw(st.lists(populations, min_size=len(ys), max_size=len(ys)))
    d = dim(ys, population=pops, se=[1.0] * len(ys), reference=0)
    shuffled = replace(d, subgroups=tuple(reversed(d.subgroups)))
    for m, r in all_measures(d, ComputeOptions(simulations=2)).items():
        assert compute(shuffled, m, ComputeOptions(simulations=2)).estimate == pytest.approx(
            r.estimate, rel=1e-9, abs=1e-12
        ), m


@settings(max_examples=30, deadline=None)
@given(ys=estimates)
def test_favourable_sii_positive_when_rising_with_advantage(ys: list[float]) -> None:
    # Distinct values at least 0.1 apart, so that the gradient is not lost in rounding.
    rising = sorted({round(y, 1) for y in ys})
    if len(rising) < 3:
        return
    d = dim(rising, population=[1000.0] * len(rising), ordered=True)
    assert compute(d, Measure.SII).estimate > 0
    assert compute(d, Measure.ACI).estimate > 0
    assert compute(d, Measure.D).estimate > 0


# ---------------------------------------------------------------------------------------------
# The HEAT Plus template


def _template(rows: list[dict[str, str]], header: tuple[str, ...] = TEMPLATE_COLUMNS) -> str:
    lines = [",".join(header)]
    for row in rows:
        lines.append(",".join(row.get(c, "") for c in header))
    return "\n".join(lines) + "\n"


def _row(**overrides: str) -> dict[str, str]:
    row = {
        "setting": "Kingdom",
        "date": "2024",
        "source": "Takamul",
        "indicator_abbr": "sba",
        "indicator_name": "Births attended by skilled health personnel (%)",
        "dimension": "Region",
        "subgroup": "North",
        "estimate": "80",
        "se": "2",
        "population": "1000",
        "setting_average": "85",
        "favourable_indicator": "1",
        "indicator_scale": "100",
        "ordered_dimension": "0",
        "subgroup_order": "0",
        "reference_subgroup": "0",
    }
    row.update(overrides)
    return row


def _regions() -> list[dict[str, str]]:
    return [
        _row(subgroup="North", estimate="80"),
        _row(subgroup="South", estimate="90", reference_subgroup="1"),
        _row(subgroup="East", estimate="70"),
    ]


def test_template_reads_groups(samples: dict[str, DimensionData]) -> None:
    template = read_template(DATA)
    assert template.rows_read == 35
    assert len(template.groups) == 3
    sba = samples["sba"]
    assert sba.ordered and sba.favourable and sba.scale == 100
    assert sba.setting_average == pytest.approx(91.59669)
    assert [s.order for s in sba.subgroups] == [1, 2, 3, 4, 5]
    assert samples["nonordered"].reference is not None
    assert samples["nonordered"].reference.name == "Region 14"


def test_template_se_from_confidence_interval() -> None:
    rows = _regions()
    rows[0] = _row(subgroup="North", estimate="80", se="", ci_lb="76.08", ci_ub="83.92")
    template, issues = parse_template(_template(rows))
    assert issues == []
    north = template.groups[0].data.subgroups[0]
    assert north.se == pytest.approx((83.92 - 76.08) / (2 * 1.96))  # = 2.0


def test_template_errors_name_line_and_column() -> None:
    rows = _regions()
    rows[1] = _row(subgroup="South", estimate="ninety")
    rows[2] = _row(subgroup="East", favourable_indicator="2", ci_lb="60")
    template, issues = parse_template(_template(rows))
    found = {(i.line, i.column) for i in issues}
    assert (3, "estimate") in found
    assert (4, "favourable_indicator") in found
    assert (4, "ci_ub") in found  # ci_lb without ci_ub
    assert "line 3, column estimate: not a number: 'ninety'" in [str(i) for i in issues]
    # The bad lines are not silently dropped: the group they belong to is not built either.
    assert template.groups == ()


def test_template_missing_column_is_reported() -> None:
    header = tuple(c for c in TEMPLATE_COLUMNS if c != "indicator_scale")
    _, issues = parse_template(_template(_regions(), header))
    assert [(i.line, i.column) for i in issues] == [(1, "indicator_scale")]


def test_template_group_consistency_errors() -> None:
    rows = _regions()
    rows.append(_row(subgroup="North", estimate="60"))  # duplicate subgroup, line 5
    rows.append(_row(subgroup="West", indicator_scale="1000"))  # inconsistent scale, line 6
    rows.append(_row(subgroup="Centre", reference_subgroup="1"))  # a second reference, line 7
    template, issues = parse_template(_template(rows))
    found = {(i.line, i.column) for i in issues}
    assert found == {(5, "subgroup"), (6, "indicator_scale"), (7, "reference_subgroup")}
    assert template.groups == ()


def test_template_ordered_dimension_needs_orders() -> None:
    rows = [
        _row(subgroup="Q1", ordered_dimension="1", subgroup_order="1"),
        _row(subgroup="Q2", ordered_dimension="1", subgroup_order=""),
        _row(subgroup="Q3", ordered_dimension="1", subgroup_order="1"),
    ]
    _, issues = parse_template(_template(rows))
    assert {(i.line, i.column) for i in issues} == {(3, "subgroup_order"), (4, "subgroup_order")}


def test_template_wrong_field_count_and_bad_scale() -> None:
    text = _template(_regions()) + "Kingdom,2024\n"
    text = text.replace(",100,0,0,0\n", ",-5,0,0,0\n", 1)
    _, issues = parse_template(text)
    assert [(i.line, i.column) for i in issues] == [(2, "indicator_scale"), (5, None)]


def test_read_template_raises_with_every_issue(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    rows = [_row(subgroup="A", estimate=""), _row(subgroup="B", se="-1"), _row(subgroup="C")]
    path.write_text(_template(rows), encoding="utf-8")
    with pytest.raises(TemplateError) as err:
        read_template(path)
    assert [(i.line, i.column) for i in err.value.issues] == [(2, "estimate"), (3, "se")]


def test_output_csv_one_row_per_applicable_measure(tmp_path: Path) -> None:
    template = read_template(DATA)
    rows = compute_rows(template, FAST)
    out = tmp_path / "measures.csv"
    assert write_measures(out, rows) == len(rows)
    with out.open(encoding="utf-8") as handle:
        written = list(csv.DictReader(handle))
    assert tuple(written[0]) == OUTPUT_COLUMNS
    per_group: dict[GroupKey, list[str]] = {}
    for line in written:
        key = GroupKey(*(line[c] for c in OUTPUT_COLUMNS[:5]))
        per_group.setdefault(key, []).append(line["measure"])
    for group in template.groups:
        expected = [m.value for m in Measure if applicable(m, group.data)]
        assert per_group[group.key] == expected
    assert all(m == m.lower() for ms in per_group.values() for m in ms)
    aci = next(w for w in written if w["indicator_abbr"] == "sba" and w["measure"] == "aci")
    assert float(aci["estimate"]) == pytest.approx(4.30052, rel=1e-6)


def test_output_leaves_unknown_values_empty(tmp_path: Path) -> None:
    rows = [_row(subgroup=s, estimate=e, se="") for s, e in (("A", "10"), ("B", "20"))]
    template, issues = parse_template(_template(rows))
    assert issues == []
    out = tmp_path / "m.csv"
    write_measures(out, compute_rows(template))
    d_row = next(r for r in csv.DictReader(out.open(encoding="utf-8")) if r["measure"] == "d")
    assert (d_row["estimate"], d_row["se"], d_row["ci_lb"], d_row["ci_ub"]) == ("10.0", "", "", "")


# ---------------------------------------------------------------------------------------------
# The command


def test_cli_measures_writes_csv(tmp_path: Path) -> None:
    out = tmp_path / "out" / "measures.csv"
    result = CliRunner().invoke(
        equity_app, ["measures", str(DATA), "--out", str(out), "--simulations", "200"]
    )
    assert result.exit_code == 0, result.output
    assert "rows read" in result.output and "35" in result.output
    assert "measures written" in result.output
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == ",".join(OUTPUT_COLUMNS)
    assert len(lines) - 1 == len(compute_rows(read_template(DATA), FAST))


def test_cli_bad_input_exits_2_with_lines(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    rows = _regions()
    rows[2] = _row(subgroup="East", estimate="n/a")
    path.write_text(_template(rows), encoding="utf-8")
    out = tmp_path / "never.csv"
    result = CliRunner().invoke(equity_app, ["measures", str(path), "--out", str(out)])
    assert result.exit_code == 2
    assert "line 4, column estimate" in result.output
    assert "nothing was computed" in result.output
    assert not out.exists()


def test_cli_missing_file_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        equity_app, ["measures", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o.csv")]
    )
    assert result.exit_code == 2
    assert "no such file" in result.output


def test_empty_template_is_an_error() -> None:
    template, issues = parse_template("")
    assert template == Template((), 0)
    assert [(i.line, i.column) for i in issues] == [(1, None)]


def test_measure_result_is_plain_data() -> None:
    r = MeasureResult(1.0, None, None, None)
    assert r.ci_method is None
