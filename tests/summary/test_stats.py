"""Tests of flows/summary/stats.py against an independent statsmodels fit, and the small-grid rules.

    .venv/bin/python -m pytest -q tests/test_stats.py
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from flows.summary import permutation, stats
from flows.summary import rows as R
from tests.summary_grid import BASE, LR_EFFECT, LRS, build_grid, rows_of


@pytest.fixture(scope="module")
def balanced(tmp_path_factory):
    g = tmp_path_factory.mktemp("grid") / "demo"
    return R.collect_rows(g, build_grid(g))


def pooled(effs, factor):
    return next(e for e in effs if e.factor == factor and e.stratum == "all")


def type2_table(formula: str, data):
    """statsmodels' type II ANOVA table (imported here: it costs most of a second, in every worker
    that collects this file)."""
    import statsmodels.api as sm
    from statsmodels.formula.api import ols

    return sm.stats.anova_lm(ols(formula, data=data).fit(), typ=2)


def reference_anova(rows, formula="mean_dice ~ C(lr) + C(bce_weight) + C(inputs) * C(prediction)"):
    """statsmodels' own type II table of the complete cells, written from scratch here."""
    import pandas as pd

    data = pd.DataFrame([r for r in rows if r["status"] == "complete"])
    for col in ("lr", "bce_weight"):
        data[col] = data[col].astype(str)  # levels are categories
    table = type2_table(formula, data)
    resid = table.loc["Residual", "sum_sq"]
    return {
        k: (row["F"], row["PR(>F)"], row["sum_sq"] / (row["sum_sq"] + resid), row["df"]) for k, row in table.iterrows()
    }


def assert_matches_statsmodels(effs, ref):
    for factor in ("lr", "bce_weight", "inputs", "prediction"):
        e = pooled(effs, factor)
        f, p, eta, df = ref[f"C({factor})"]
        assert e.f == pytest.approx(f, rel=1e-6) and e.p == pytest.approx(p, rel=1e-6, abs=1e-12)
        assert e.partial_eta_sq == pytest.approx(eta, rel=1e-6) and e.df[0] == df
        assert e.df[1] == ref["Residual"][3]


# ----------------------------------------------------------------------------- the pooled model


def test_effects_find_the_planted_effect_and_none_for_the_null(balanced):
    result = stats.effects(balanced)
    lr, bce = pooled(result, "lr"), pooled(result, "bce_weight")
    assert lr.verdict == "matters" and lr.p < 1e-6 and lr.partial_eta_sq > 0.5 and lr.best_level == 0.0025
    assert lr.test == "type II main-effects ANOVA with inputs x prediction" and lr.n == 108
    assert lr.df == (2, 108 - 1 - 2 - 2 - 3)  # intercept, lr, bce, 4 strata
    assert bce.verdict == "no detectable effect" and bce.p > 0.05 and bce.partial_eta_sq < 0.06
    per_stratum = [e for e in result if e.factor == "lr" and e.stratum != "all"]
    assert sorted(e.stratum for e in per_stratum) == ["anat-area", "anat-ring", "full-area", "full-ring"]
    assert all(e.test == "type II main-effects ANOVA within the stratum" for e in per_stratum)
    assert all(e.n == 27 and e.p_perm is not None for e in per_stratum)
    assert all(e.verdict == "matters" and e.p_perm < 0.01 for e in per_stratum)
    assert [lv.n for lv in lr.levels] == [36, 36, 36] and [lv.level for lv in lr.levels] == LRS
    # inputs is tested within each prediction, prediction within each inputs.
    assert sorted(e.stratum for e in result if e.factor == "inputs" and e.stratum != "all") == ["area", "ring"]
    # The margin: 0.0025 beats 0.00375 by the planted 0.04, and its interval holds it.
    assert lr.margin.best_level == 0.0025 and lr.margin.next_level == 0.00375
    assert lr.margin.low < 0.04 < lr.margin.high and lr.margin.high - lr.margin.low < 0.02


def test_pooled_test_equals_statsmodels_on_a_balanced_grid(balanced):
    assert_matches_statsmodels(stats.effects(balanced), reference_anova(balanced))


def test_pooled_test_equals_statsmodels_with_failures_at_random(balanced):
    rng = np.random.default_rng(7)
    rows = [{**r, "status": "failed", "mean_dice": None} if rng.random() < 0.2 else r for r in balanced]
    assert 70 < len(R.scored(rows)) < 100
    assert_matches_statsmodels(stats.effects(rows), reference_anova(rows))


def test_a_null_factor_does_not_inherit_failures_that_follow_another_factor(balanced):
    # bce_weight has no effect, but its 0.75 cells fail at the worst lr: its survivors look better.
    rows = [{**r, "status": "failed", "mean_dice": None} if (r["bce_weight"], r["lr"]) == (0.75, 0.00167) else r
            for r in balanced]  # fmt: skip
    effs = stats.effects(rows)
    assert_matches_statsmodels(effs, reference_anova(rows))
    assert pooled(effs, "bce_weight").verdict == "no detectable effect"
    # Tested alone (blocked by the stratum only), bce_weight would have "mattered".
    alone = reference_anova(rows, "mean_dice ~ C(bce_weight) + C(inputs) * C(prediction)")
    assert alone["C(bce_weight)"][1] < 0.05


def test_one_factor_in_one_stratum_equals_f_oneway():
    from scipy.stats import f_oneway

    rng = np.random.default_rng(3)
    y = rng.normal(0.7, 0.01, 30) + np.repeat([0.0, 0.005, 0.01], 10)
    e = pooled(stats.effects(rows_of(y, np.repeat([0.5, 0.67, 0.75], 10))), "bce_weight")
    ref = f_oneway(y[:10], y[10:20], y[20:])
    assert e.f == pytest.approx(ref.statistic) and e.p == pytest.approx(ref.pvalue) and e.df == (2, 27)
    between = sum(10 * (g.mean() - y.mean()) ** 2 for g in (y[:10], y[10:20], y[20:]))
    assert e.partial_eta_sq == pytest.approx(between / ((y - y.mean()) ** 2).sum())  # one-way: eta² itself
    assert e.p_perm is None  # 30 cells: the F test decides


def test_a_factor_that_follows_the_stratum_is_aliased_not_tested():
    rng = np.random.default_rng(4)
    rows = []
    for i, (lr, inputs, prediction, rep) in enumerate(np.ndindex(2, 2, 2, 5)):
        rows.append({"id": f"{i:03d}", "lr": [0.002, 0.005][lr], "partition": [0.25, 0.5][inputs],
                     "inputs": ["full", "anat"][inputs], "prediction": ["area", "ring"][prediction],
                     "status": "complete",
                     "mean_dice": 0.7 + 0.05 * lr + 0.1 * inputs + rng.normal(0, 0.01)})  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        effs = stats.effects(rows)
    part = pooled(effs, "partition")
    assert part.verdict == "n/a" and "aliased with inputs" in part.reason
    assert pooled(effs, "lr").verdict == "matters" and pooled(effs, "inputs").verdict == "matters"


def test_factor_x_stratum_interaction_shows_where_a_factor_matters():
    rng = np.random.default_rng(5)
    rows = []
    for i, (lr, bce, (inputs, prediction), rep) in enumerate(
        (a, b, s, k) for a in (0.002, 0.005) for b in (0.5, 0.75) for s in BASE for k in range(3)
    ):
        gain = 0.03 * (lr == 0.005) * (prediction == "ring")  # lr matters for ring only
        rows.append({"id": f"{i:03d}", "lr": lr, "bce_weight": bce, "inputs": inputs, "prediction": prediction,
                     "status": "complete",
                     "mean_dice": BASE[inputs, prediction] + gain + rng.normal(0, 0.004)})  # fmt: skip
    effs = stats.effects(rows)
    inter = pooled(effs, "lr").interaction
    assert inter.verdict == "differs between strata" and inter.p < 1e-6
    import pandas as pd

    data = pd.DataFrame(rows).assign(stratum=lambda d: d.inputs + "-" + d.prediction, lr=lambda d: d.lr.astype(str))
    ref = type2_table("mean_dice ~ C(bce_weight) + C(lr) * C(stratum)", data)
    assert inter.f == pytest.approx(ref.loc["C(lr):C(stratum)", "F"], rel=1e-6)
    assert inter.df == (3, int(ref.loc["Residual", "df"]))
    verdicts = {e.stratum: e.verdict for e in effs if e.factor == "lr" and e.stratum != "all"}
    assert verdicts == {"full-ring": "matters", "anat-ring": "matters",
                        "full-area": "no detectable effect", "anat-area": "no detectable effect"}  # fmt: skip
    assert pooled(effs, "bce_weight").interaction.verdict == "no detectable difference"


# ----------------------------------------------------------------------------- small grids


def demo_rows(effect: float, noise: float, seed: int = 0):
    """The demo's shape: 2 lr x 2 bce_weight x 2 inputs, one prediction: 8 cells."""
    rng = np.random.default_rng(seed)
    return [
        {"id": f"{i}", "lr": lr, "bce_weight": bce, "inputs": inputs, "prediction": "area", "status": "complete",
         "mean_dice": 0.7 + effect * (lr == 0.005) + 0.1 * (inputs == "full") + rng.normal(0, noise)}  # fmt: skip
        for i, (lr, bce, inputs) in enumerate(
            (a, b, c) for a in (0.002, 0.005) for b in (0.5, 0.75) for c in ("full", "anat")
        )
    ]


def test_a_tiny_grid_with_a_huge_effect_cannot_be_tested():
    e = pooled(stats.effects(demo_rows(effect=0.2, noise=0.001)), "lr")
    assert e.f > 1000 and e.p < 1e-4  # the F test would claim it; with 8 cells it cannot be trusted
    # Exact: 4 blocks (bce x inputs) of 2 cells -> 2^4 relabellings, the mirror ties the extreme.
    assert e.exact and e.permutations == 16 and e.p_min == pytest.approx(2 / 16) and e.p_perm == e.p_min
    assert e.verdict == "cannot be tested at this size"


def test_small_n_uses_an_exact_permutation_test():
    rows = rows_of([0.60, 0.61, 0.62, 0.80, 0.81, 0.82], [0.5, 0.5, 0.5, 0.75, 0.75, 0.75])
    e = pooled(stats.effects(rows), "bce_weight")
    # 6 cells split 3/3: 20 distinct splits, the observed one ties with its mirror.
    assert e.exact and e.permutations == 20 and e.p_perm == pytest.approx(0.1) and e.p < 0.001
    assert e.p_min == pytest.approx(0.1) and e.verdict == "cannot be tested at this size"


def test_a_24_cell_grid_detects_a_real_effect():
    rng = np.random.default_rng(11)
    rows = []
    for i, (lr, bce, (inputs, prediction)) in enumerate((a, b, s) for a in LRS for b in (0.5, 0.75) for s in BASE):
        mean = BASE[inputs, prediction] + LR_EFFECT[lr] + 0.008 * (bce == 0.75) + rng.normal(0, 0.003)
        rows.append({"id": f"{i:02d}", "lr": lr, "bce_weight": bce, "inputs": inputs, "prediction": prediction,
                     "status": "complete", "mean_dice": mean})  # fmt: skip
    effs = stats.effects(rows)
    bce = pooled(effs, "bce_weight")
    assert bce.n == 24 and bce.exact and bce.permutations == 2**12  # 12 lr x stratum pairs
    assert bce.verdict == "matters" and bce.p_perm < 0.01 and bce.best_level == 0.75
    assert bce.margin.low < 0.008 < bce.margin.high
    lr = pooled(effs, "lr")
    assert lr.verdict == "matters" and not lr.exact and lr.permutations == permutation.PERMUTATIONS + 1
    # Within a stratum, 6 cells: 3 pairs -> 8 relabellings, smallest p 2/8: honestly untestable.
    inside = [e for e in effs if e.factor == "bce_weight" and e.stratum != "all"]
    assert all(e.verdict == "cannot be tested at this size" and e.p_min == pytest.approx(0.25) for e in inside)


# ----------------------------------------------------------------------------- degenerate input


@pytest.mark.parametrize(
    "values, levels, reason",
    [
        ([0.7, 0.8, 0.75], [0.5, 0.5, 0.5], "only one level"),
        ([0.7], [0.5], "only one level"),  # one complete cell: nothing is fitted at all
        ([0.7, 0.8, 0.75], [0.5, 0.5, 0.75], "has 1 complete cell"),
        ([0.7, 0.7, 0.7, 0.7], [0.5, 0.5, 0.75, 0.75], "zero variance"),
        ([0.7, 0.7, 0.8, 0.8], [0.5, 0.5, 0.75, 0.75], "no spread within levels"),
    ],
)
def test_degenerate_cases_are_na_with_a_reason_and_no_warning(values, levels, reason):
    rows = rows_of(values, levels)
    rows.append({**rows[0], "id": "ffff", "bce_weight": 0.99, "status": "failed", "mean_dice": None})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        effs = stats.effects(rows)
    e = next(e for e in effs if e.stratum == "all")
    assert e.verdict == "n/a" and reason in e.reason and e.f is None and e.p is None


def test_factor_fixed_in_the_grid_is_not_tested():
    assert stats.effects(rows_of([0.7, 0.8], [0.5, 0.5])) == []


def test_a_factor_with_a_thin_level_is_left_out_and_the_others_still_tested(balanced):
    # One surviving cell at lr 0.00167: lr cannot be tested, bce_weight and the strata still can.
    lone = [r for r in balanced if r["lr"] == 0.00167][0]
    rows = [r if r["lr"] != 0.00167 or r is lone else {**r, "status": "failed", "mean_dice": None} for r in balanced]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        effs = stats.effects(rows)
    assert pooled(effs, "lr").verdict == "n/a" and "level 0.00167 has 1 complete cell" in pooled(effs, "lr").reason
    ref = reference_anova(rows, "mean_dice ~ C(bce_weight) + C(inputs) * C(prediction)")
    bce = pooled(effs, "bce_weight")
    assert bce.f == pytest.approx(ref["C(bce_weight)"][0], rel=1e-6) and bce.verdict != "n/a"
