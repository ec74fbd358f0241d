"""The permutation test of one model term: Dice shuffled among cells equal in every other term.

    found = permutation_test(x, y, term, terms, rows)   # p_perm, p_min, permutations, exact

A term's type II test compares the model without the terms that contain it against that model
less the term too (:func:`type2_columns`). Under "the term has no effect", cells that agree on
every other factor of the model differ only by noise, so their Dice are exchangeable (restricted
randomisation): the test is exact whatever the other factors do. It enumerates every distinct
relabelling when there are at most ``ENUMERATE_LIMIT`` of them, else draws ``PERMUTATIONS`` with
a fixed seed. The model's terms are built, and the p-values read, in flows/summary/stats.py. Only numpy.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from flows.summary.rows import level_key, stratum_of

PERMUTATIONS = 4999  # drawn relabellings when there are too many to enumerate
ENUMERATE_LIMIT = 20000  # at most this many distinct relabellings are enumerated (exact p)
SEED = 0  # the same grid gives the same report
STRATUM = "stratum"  # the interaction term inputs x prediction, in the model's term list
_TOL = 1e-9  # relative: ties of test statistics up to rounding


class Term(BaseModel):
    """One term of the model: a factor, or the inputs x prediction interaction (STRATUM)."""

    name: str
    columns: list[int] = Field(description="its columns in the design matrix")
    parts: tuple[str, ...] = Field(description="the factors it is made of")


def type2_columns(t: Term, terms: list[Term]) -> tuple[list[int], list[int]]:
    """Columns of the models a type II test compares: without terms containing t, then also without t."""
    full = [0, *[c for u in terms if not (t.name in u.parts and u is not t) for c in u.columns]]
    return full, [c for c in full if c not in t.columns]


def permutation_test(x: np.ndarray, y: np.ndarray, t: Term, terms: list[Term], rows: list) -> dict[str, Any]:
    """Exact (or drawn) p of the type II F, shuffling Dice among cells equal in all other terms.

    Cells that agree on every other factor of the model differ, under "t has no effect", only
    by noise, so their Dice are exchangeable whatever the other factors do: the test is exact.
    The observed labelling is one of the relabellings, so p >= 1 / count.
    """
    full, reduced = type2_columns(t, terms)
    others = [p for u in terms if u is not t and t.name not in u.parts for p in u.parts]
    groups = [tuple(str(level_key(r[f])) for f in others) for r in rows]
    labels = [str(level_key(r[t.name])) for r in rows] if t.name != STRATUM else [stratum_of(r) for r in rows]
    blocks = [np.flatnonzero([g == key for g in groups]) for key in dict.fromkeys(groups)]
    count = math.prod(_arrangement_count([labels[i] for i in b]) for b in blocks)
    if count <= ENUMERATE_LIMIT:
        perms, exact = _enumerate(blocks, labels), True
    else:
        perms, exact = _draw(blocks, len(y), PERMUTATIONS), False
    stats = _statistic(x[:, full], x[:, reduced], y[perms].T)
    observed = _statistic(x[:, full], x[:, reduced], y[:, None])[0]
    ge = stats >= observed * (1 - _TOL)
    at_max = stats >= stats.max() * (1 - _TOL)
    if exact:
        p, p_min, n = ge.mean(), at_max.mean(), len(stats)
    else:  # the observed labelling counts as one of the draws
        p, p_min, n = (1 + ge.sum()) / (1 + len(stats)), 1 / (1 + len(stats)), len(stats) + 1
    return {"p_perm": float(p), "p_min": float(p_min), "permutations": int(n), "exact": exact}


def _arrangement_count(labels: list[str]) -> int:
    """Distinct orderings of a multiset of labels: n! / prod(k_i!)."""
    return math.factorial(len(labels)) // math.prod(math.factorial(k) for k in Counter(labels).values())


def _enumerate(blocks: list[np.ndarray], labels: list[str]) -> np.ndarray:
    """Every distinct relabelling, as index arrays: row i takes the Dice of cell perm[i]."""
    per_block = []
    for b in blocks:
        block_labels = [labels[i] for i in b]
        options = []
        for order in _distinct_orders(block_labels):
            # Give the cells labelled `lv` the Dice of the cells that `order` labels lv.
            perm = np.empty(len(b), dtype=int)
            for lv in set(block_labels):
                mine = [j for j, v in enumerate(block_labels) if v == lv]
                perm[mine] = [b[j] for j, v in enumerate(order) if v == lv]
            options.append(perm)
        per_block.append(options)
    out = []
    n = sum(len(b) for b in blocks)
    for choice in itertools.product(*per_block):
        perm = np.empty(n, dtype=int)
        for b, p in zip(blocks, choice):
            perm[b] = p
        out.append(perm)
    return np.array(out)


def _distinct_orders(labels: list[str]):
    if not labels:
        yield ()
        return
    for v in sorted(set(labels)):
        rest = list(labels)
        rest.remove(v)
        for tail in _distinct_orders(rest):
            yield (v, *tail)


def _draw(blocks: list[np.ndarray], n: int, rounds: int) -> np.ndarray:
    rng = np.random.default_rng(SEED)
    perms = np.tile(np.arange(n), (rounds, 1))
    for b in blocks:
        perms[:, b] = b[rng.random((rounds, len(b))).argsort(axis=1)]
    return perms


def _statistic(x_full: np.ndarray, x_reduced: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """(RSS_reduced - RSS_full) / RSS_full per column of ``ys``: the F up to its constant df ratio."""
    rss = [((ys - x @ (np.linalg.pinv(x) @ ys)) ** 2).sum(axis=0) for x in (x_full, x_reduced)]
    return (rss[1] - rss[0]) / np.maximum(rss[0], 1e-300)
