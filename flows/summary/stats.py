"""Does each hyperparameter matter? Type II main-effects ANOVAs of validation Dice, exact when small.

    effs = effects(rows)        # rows from flows.summary.rows.collect_rows; complete cells only

The response is each complete cell's mean validation Dice. Per grid, one linear model holds every
factor that varies plus the inputs x prediction stratum, each factor coded as categories (its
levels are settings, not a scale):

    mean_dice ~ C(lr) + C(bce_weight) + ... + C(inputs) * C(prediction)

Each factor is tested by its type II F (statsmodels ``ols`` + ``anova_lm(typ=2)``: the factor after
all the others), so another factor's variance leaves the residual and a factor with no effect does
not inherit the effect of one whose failed cells it happens to share. The effect size is that
model's partial eta squared, SS_factor / (SS_factor + SS_residual). The same model is fitted within
each stratum (the other factors as covariates), and a factor x stratum F test says whether a
factor's effect differs between strata.

Below ``SMALL_N`` complete cells the F distribution is not trusted: an exact permutation test
decides (flows/summary/permutation.py: Dice shuffled only among cells equal in every other factor of the
model). When even the most extreme relabelling cannot reach p < alpha the verdict is "cannot be
tested at this size". No torch and no Prefect here.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from flows.summary.permutation import STRATUM, Term, permutation_test, type2_columns
from flows.summary.rows import (
    STRATA,
    fmt_level,
    level_key,
    scored,
    sorted_levels,
    stratum_of,
    varying_factors,
)

ALPHA = 0.05  # significance level of every test reported
# Below this many complete cells the F test's reliance on normal residuals is not trusted
# and the exact permutation test decides.
SMALL_N = 30
CONFIDENCE = 0.95  # of the margin's interval
# Cohen (1988) thresholds for (partial) eta squared: small 0.01, medium 0.06, large 0.14.
ETA_SIZES = ((0.14, "large"), (0.06, "medium"), (0.01, "small"))
NEGLIGIBLE = 0.01  # below Cohen's "small": significant but negligible

Verdict = Literal["matters", "negligible", "no detectable effect", "cannot be tested at this size", "n/a"]


class LevelStat(BaseModel):
    """Validation Dice of the complete cells at one level of a factor."""

    level: Any = Field(description="the factor's value, as in the spec")
    n: int = Field(description="complete cells at this level")
    mean: float | None = Field(description="mean of their mean_dice")
    std: float | None = Field(description="sample standard deviation (None below 2 cells)")


class Margin(BaseModel):
    """How far the best level is ahead of the next one, adjusted for the other factors."""

    best_level: Any = Field(description="level with the highest model-adjusted mean Dice")
    next_level: Any = Field(description="the runner-up level")
    dice: float = Field(description="best minus runner-up, in mean validation Dice")
    low: float = Field(description="lower end of the confidence interval (t, model residual df)")
    high: float = Field(description="upper end of the confidence interval")
    confidence: float = Field(CONFIDENCE, description="the interval's coverage")


class Interaction(BaseModel):
    """Does the factor's effect differ between inputs x prediction strata? (factor x stratum F test)"""

    f: float | None = Field(None, description="F statistic of factor x stratum after the main effects")
    df: tuple[int, int] | None = Field(None, description="(numerator, denominator) degrees of freedom")
    p: float | None = Field(None, description="p-value of the F test")
    partial_eta_sq: float | None = Field(None, description="partial eta squared of the interaction")
    verdict: Literal["differs between strata", "no detectable difference", "n/a"] = Field("n/a")
    reason: str = Field("", description="why the test is n/a")


class Effect(BaseModel):
    """The effect of one hyperparameter on validation Dice, pooled over strata or within one."""

    factor: str = Field(description="hyperparameter name, e.g. bce_weight")
    stratum: str = Field(description="'all' (pooled, strata in the model) or e.g. 'full-area'")
    test: str = Field(description="the test used, in words")
    n: int = Field(description="complete cells entering the test")
    levels: list[LevelStat] = Field(description="per-level Dice (raw means), in level order")
    best_level: Any = Field(None, description="level with the highest model-adjusted mean Dice")
    f: float | None = Field(None, description="type II F statistic")
    df: tuple[int, int] | None = Field(None, description="(numerator, denominator) degrees of freedom")
    p: float | None = Field(None, description="p-value of the F test")
    p_perm: float | None = Field(None, description="exact or drawn permutation p-value (small n only)")
    p_min: float | None = Field(None, description="smallest p the permutation test can attain here")
    permutations: int | None = Field(None, description="relabellings the permutation p counts")
    exact: bool | None = Field(None, description="True when every distinct relabelling was enumerated")
    partial_eta_sq: float | None = Field(None, description="SS_factor / (SS_factor + SS_residual)")
    verdict: Verdict = Field(
        description="matters: p < alpha and partial eta^2 >= 0.01; negligible: p < alpha but below 0.01; "
        "cannot be tested at this size: the smallest attainable p is above alpha"
    )
    reason: str = Field("", description="why the test is n/a")
    margin: Margin | None = Field(None, description="best level's lead over the next (when tested)")
    interaction: Interaction | None = Field(None, description="factor x stratum test (pooled only)")


# ----------------------------------------------------------------------------- the plan of tests


def effects(rows: list[dict[str, Any]], alpha: float = ALPHA) -> list[Effect]:
    """Every varying hyperparameter's effect: pooled ("all") first, then one Effect per stratum.

    A factor is tested within the strata of the STRATA keys other than itself: inputs within
    each prediction, any training factor within each inputs x prediction.
    """
    factors = varying_factors(rows)
    if not factors:
        return []
    cells = scored(rows)
    pooled = model_effects(cells, factors, "all", alpha)
    add_interactions(cells, factors, pooled, alpha)
    per_stratum: dict[str, list[Effect]] = {f: [] for f in factors}
    for blocks in dict.fromkeys(_blocks_of(f) for f in factors):
        tested = [f for f in factors if _blocks_of(f) == blocks]
        for stratum in sorted({stratum_of(r, blocks) for r in cells}):
            sub = [r for r in cells if stratum_of(r, blocks) == stratum]
            inside = [f for f in factors if f not in blocks]
            found = model_effects(sub, inside, stratum, alpha)
            for f in tested:
                per_stratum[f].append(found[f])
    return [e for f in factors for e in (pooled[f], *per_stratum[f])]


def _blocks_of(factor: str) -> tuple[str, ...]:
    return tuple(k for k in STRATA if k != factor)


# ----------------------------------------------------------------------------- one model


def model_effects(rows: list[dict[str, Any]], factors: list[str], stratum: str, alpha: float) -> dict[str, Effect]:
    """Type II tests of every factor in one main-effects model fitted to ``rows``.

    Factors with one level among ``rows`` are reported n/a; factors whose levels the others
    determine (aliased, e.g. a factor that changes only with the stratum) are reported n/a
    and left out, so the rest stay estimable.
    """
    y = np.array([r["mean_dice"] for r in rows], dtype=float)
    out = {f: _empty_effect(f, rows, stratum) for f in factors}
    for f in factors:
        reason = _untestable(out[f])
        if reason:
            out[f] = out[f].model_copy(update={"reason": reason})
    # A factor left out here still varies, but no test could separate its levels.
    live = [f for f in factors if not out[f].reason]
    x, terms = design(rows, live)
    x, terms, aliased = drop_aliased(x, terms)
    for name, partner in aliased.items():
        out[name] = out[name].model_copy(update={"reason": f"aliased with {partner}: its levels follow from theirs"})
    tested = [t for t in terms if t.name in out and t.name not in aliased]
    if not tested:
        return out  # every factor is n/a already: no model to fit
    reason = _degenerate(y, x, [out[t.name] for t in tested])
    if reason:
        for t in tested:
            out[t.name] = out[t.name].model_copy(update={"reason": reason})
        return out
    table = anova_table(rows, terms)
    fits: dict[tuple[int, ...], Any] = {}  # one OLS fit per column set the margins need
    for t in tested:
        out[t.name] = _test_term(out[t.name], t, terms, x, y, table, rows, alpha, fits)
    return out


def _empty_effect(factor: str, rows: list[dict[str, Any]], stratum: str) -> Effect:
    y = np.array([r["mean_dice"] for r in rows], dtype=float)
    keys = np.array([str(level_key(r[factor])) for r in rows], dtype=object)
    stats = [_level_stat(v, y[keys == str(level_key(v))]) for v in sorted_levels(rows, factor)]
    test = "type II main-effects ANOVA" + (" with inputs x prediction" if stratum == "all" else " within the stratum")
    return Effect(factor=factor, stratum=stratum, test=test, n=len(rows), levels=stats, verdict="n/a")


def _level_stat(level: Any, y: np.ndarray) -> LevelStat:
    return LevelStat(
        level=level,
        n=len(y),
        mean=float(y.mean()) if len(y) else None,
        std=float(y.std(ddof=1)) if len(y) > 1 else None,
    )


def _untestable(e: Effect) -> str:
    """Why this factor alone cannot enter the model, or ''."""
    if len(e.levels) < 2:
        only = ", ".join(fmt_level(lv.level) for lv in e.levels) or "none"
        return f"only one level among complete cells ({only})"
    thin = next((lv for lv in e.levels if lv.n < 2), None)
    if thin:
        return f"level {fmt_level(thin.level)} has {thin.n} complete cell (need >= 2 per level)"
    return ""


def _degenerate(y: np.ndarray, x: np.ndarray, effs: list[Effect]) -> str:
    """Why no test of the model is possible, or '' (checked up front so numpy/statsmodels never warn)."""
    if len(y) == 0 or np.ptp(y) == 0:
        return "every complete cell has the same Dice (zero variance)"
    rank = np.linalg.matrix_rank(x)
    if len(y) - rank <= 0:
        return "too few cells for the number of levels (no residual degrees of freedom)"
    if rank < x.shape[1]:
        return "levels are partly confounded (some combinations are missing), so the model is not estimable"
    if _rss(x, y) <= 1e-12 * float(((y - y.mean()) ** 2).sum()):
        return "no spread within levels (the model fits every cell exactly)"
    return ""


def design(rows: list[dict[str, Any]], factors: list[str]) -> tuple[np.ndarray, list[Term]]:
    """Intercept + treatment dummies per factor (+ inputs x prediction when both vary)."""
    cols = [np.ones(len(rows))]
    terms = []
    dummies = {}
    for f in factors:
        keys = [str(level_key(r[f])) for r in rows]
        levels = [str(level_key(v)) for v in sorted_levels(rows, f)]
        d = [np.array([k == lv for k in keys], dtype=float) for lv in levels[1:]]
        dummies[f] = d
        terms.append(Term(name=f, columns=list(range(len(cols), len(cols) + len(d))), parts=(f,)))
        cols += d
    if all(k in dummies for k in STRATA):
        d = [a * b for a in dummies[STRATA[0]] for b in dummies[STRATA[1]]]
        terms.append(Term(name=STRATUM, columns=list(range(len(cols), len(cols) + len(d))), parts=STRATA))
        cols += d
    return np.column_stack(cols), terms


def drop_aliased(x: np.ndarray, terms: list[Term]) -> tuple[np.ndarray, list[Term], dict[str, str]]:
    """Remove terms that add nothing to the others' column space, last first; say whom they follow."""
    aliased: dict[str, str] = {}
    if np.linalg.matrix_rank(x) == x.shape[1]:
        return x, terms, aliased  # full rank: nothing follows from anything else
    keep = list(terms)
    # Training factors first, so one that follows the stratum is dropped, not inputs or prediction.
    order = [t for t in reversed(terms) if t.name not in STRATA] + [t for t in reversed(terms) if t.name in STRATA]
    for t in order:
        if t.name == STRATUM or t not in keep:
            continue
        others = [c for u in keep if u is not t for c in u.columns]
        base = np.linalg.matrix_rank(x[:, [0, *others]])
        if np.linalg.matrix_rank(x[:, [0, *others, *t.columns]]) == base:
            aliased[t.name] = _partner(x, t, [u for u in keep if u is not t])
            keep = [u for u in keep if u is not t and t.name not in u.parts]
    cols = [0, *[c for u in keep for c in u.columns]]
    renumbered, at = [], 1
    for u in keep:
        renumbered.append(u.model_copy(update={"columns": list(range(at, at + len(u.columns)))}))
        at += len(u.columns)
    return x[:, cols], renumbered, aliased


def _partner(x: np.ndarray, t: Term, others: list[Term]) -> str:
    for u in others:
        r = np.linalg.matrix_rank(x[:, [0, *u.columns]])
        if np.linalg.matrix_rank(x[:, [0, *u.columns, *t.columns]]) == r:
            return " x ".join(STRATA) if u.name == STRATUM else u.name
    return "the other factors together"


def _formula_term(t: Term, names: dict[str, str]) -> str:
    return ":".join(f"C({names[p]})" for p in t.parts)


def anova_table(rows: list[dict[str, Any]], terms: list[Term]) -> dict[str, tuple[float, float, float, float]]:
    """statsmodels' type II ANOVA of the model: term -> (sum of squares, df, F, p), plus 'Residual'."""
    import pandas as pd
    import statsmodels.api as sm
    from statsmodels.formula.api import ols

    factors = list(dict.fromkeys(p for t in terms for p in t.parts))
    # Plain column names keep any factor name (dots, dashes) out of the formula's grammar.
    names = {f: f"f{i}" for i, f in enumerate(factors)}
    data = pd.DataFrame({names[f]: [str(level_key(r[f])) for r in rows] for f in factors})
    data["y"] = [r["mean_dice"] for r in rows]
    formula = "y ~ " + (" + ".join(_formula_term(t, names) for t in terms) or "1")
    table = sm.stats.anova_lm(ols(formula, data=data).fit(), typ=2)
    by_label = {_formula_term(t, names): t.name for t in terms}
    out = {}
    for label, row in table.iterrows():
        name = "Residual" if label == "Residual" else by_label[label]
        out[name] = (float(row["sum_sq"]), float(row["df"]), float(row["F"]), float(row["PR(>F)"]))
    return out


def _rss(x: np.ndarray, y: np.ndarray) -> float:
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    r = y - x @ coef
    return float(r @ r)


# ----------------------------------------------------------------------------- one test


def _test_term(
    e: Effect, t: Term, terms: list[Term], x: np.ndarray, y: np.ndarray, table: dict, rows: list, alpha: float,
    fits: dict,
) -> Effect:
    ss, df1, f, p = table[t.name]
    ss_res, df2, _, _ = table["Residual"]
    update: dict[str, Any] = {
        "f": f, "df": (int(round(df1)), int(round(df2))), "p": p, "partial_eta_sq": ss / (ss + ss_res),
    }  # fmt: skip
    p_use, p_min = p, None
    if len(y) < SMALL_N:
        perm = permutation_test(x, y, t, terms, rows)
        update.update(perm)
        p_use, p_min = perm["p_perm"], perm["p_min"]
    margin = level_margin(x, y, t, terms, rows, fits)
    update["margin"] = margin
    update["best_level"] = margin.best_level if margin else None
    if p_min is not None and p_min > alpha:
        update["verdict"] = "cannot be tested at this size"
    elif p_use >= alpha:
        update["verdict"] = "no detectable effect"
    else:
        update["verdict"] = "matters" if update["partial_eta_sq"] >= NEGLIGIBLE else "negligible"
    return e.model_copy(update=update)


# ----------------------------------------------------------------------------- margin


def level_margin(
    x: np.ndarray, y: np.ndarray, t: Term, terms: list[Term], rows: list, fits: dict | None = None
) -> Margin | None:
    """Best level vs the next, from the model's coefficients (other factors held fixed), with a t interval.

    ``fits`` caches the OLS fit per column set: every training factor shares one.
    """
    if t.name == STRATUM:
        return None
    import statsmodels.api as sm

    full, _ = type2_columns(t, terms)
    levels = sorted_levels(rows, t.name)
    fits = {} if fits is None else fits
    if tuple(full) not in fits:
        # QR, not the default pseudo-inverse: the design is full rank here (checked), and QR is faster.
        fits[tuple(full)] = sm.OLS(y, x[:, full]).fit(method="qr")
    fit = fits[tuple(full)]
    where = [full.index(c) for c in t.columns]
    effect = np.array([0.0, *fit.params[where]])  # the first level is the reference
    best, second = np.argsort(-effect, kind="stable")[:2]
    c = np.zeros(len(full))
    for lv, sign in ((best, 1.0), (second, -1.0)):
        if lv > 0:
            c[where[lv - 1]] = sign
    test = fit.t_test(c)
    low, high = np.asarray(test.conf_int(alpha=1 - CONFIDENCE)).ravel()
    return Margin(
        best_level=levels[best], next_level=levels[second], dice=float(np.ravel(test.effect)[0]),
        low=float(low), high=float(high),
    )  # fmt: skip


# ----------------------------------------------------------------------------- factor x stratum


def add_interactions(rows: list[dict[str, Any]], factors: list[str], pooled: dict[str, Effect], alpha: float) -> None:
    """Fill each pooled training factor's factor x stratum test (replacing the Effect in ``pooled``)."""
    strata = {stratum_of(r) for r in rows}
    shared = None  # the main-effects fit, made once for all factors
    for f in factors:
        if f in STRATA or pooled[f].verdict == "n/a":
            continue
        if len(strata) < 2:
            inter = Interaction(reason="one inputs x prediction stratum")
        elif len(rows) < SMALL_N:
            inter = Interaction(reason=f"needs at least {SMALL_N} complete cells")
        else:
            model = tuple(g for g in factors if pooled[g].reason == "")
            shared = shared or _interaction_data(rows, model)
            inter = interaction_test(rows, list(model), f, alpha, shared)
        pooled[f] = pooled[f].model_copy(update={"interaction": inter})


def _interaction_data(rows: list[dict[str, Any]], factors: tuple[str, ...]) -> tuple[Any, str, dict[str, str], Any]:
    """The data frame, main-effects formula, column names and main-effects fit every interaction test shares."""
    import pandas as pd
    from statsmodels.formula.api import ols

    live = [f for f in factors if f not in STRATA and len({level_key(r[f]) for r in rows}) > 1]
    names = {f: f"f{i}" for i, f in enumerate(live)}
    data = pd.DataFrame({names[f]: [str(level_key(r[f])) for r in rows] for f in live})
    data["stratum"] = [stratum_of(r) for r in rows]
    data["y"] = [r["mean_dice"] for r in rows]
    base = "y ~ " + " + ".join([*(f"C({names[f]})" for f in live), "C(stratum)"])
    return data, base, names, ols(base, data=data).fit()


def interaction_test(
    rows: list[dict[str, Any]], factors: list[str], factor: str, alpha: float, shared: tuple | None = None
) -> Interaction:
    """statsmodels F test of main effects + factor x stratum against main effects alone (rank-aware df)."""
    from statsmodels.formula.api import ols

    data, base, names, small = shared or _interaction_data(rows, tuple(factors))
    big = ols(f"{base} + C({names[factor]}):C(stratum)", data=data).fit()
    if big.df_resid <= 0 or big.df_model <= small.df_model:
        return Interaction(reason="no residual degrees of freedom for the interaction")
    f, p, df1 = big.compare_f_test(small)
    eta = (small.ssr - big.ssr) / small.ssr
    verdict = "differs between strata" if p < alpha else "no detectable difference"
    df = (int(df1), int(big.df_resid))
    return Interaction(f=float(f), df=df, p=float(p), partial_eta_sq=float(eta), verdict=verdict)
