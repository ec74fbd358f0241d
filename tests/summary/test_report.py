"""Tests of flows/summary/report.py: summary.md answers "does it matter?", numbers never contradict verdicts.

    .venv/bin/python -m pytest -q tests/test_report.py
"""

from __future__ import annotations

from flows.summary import report, stats
from tests.summary_grid import rows_of


def test_p_and_eta_print_the_digits_that_decide_the_verdict():
    assert report.p_text(0.0496) == "p=0.0496" and report.p_text(0.0504) == "p=0.0504"
    assert report.p_text(0.44) == "p=0.44" and report.p_text(0.004) == "p=0.004"
    assert report.p_text(0.0004) == "p<0.001" and report.p_text(0.05) == "p=0.05"
    assert report.p_text(0.0496, bare=True) == "0.0496" and report.p_text(None) == ""
    assert report.eta_text(0.00991) == "0.0099" and report.eta_text(0.0101) == "0.0101"
    assert report.eta_text(0.0599) == "0.0599" and report.eta_text(0.5) == "0.500"
    assert report.eta_size(0.00991) == "negligible" and report.eta_size(0.15) == "large"


def test_a_negligible_effect_never_reads_as_small():
    e = stats.Effect(factor="gamma", stratum="all", test="t", n=1800, levels=[], f=4.1, df=(4, 1780),
                     p=0.0496, partial_eta_sq=0.00991, verdict="negligible")  # fmt: skip
    text = report.effect_sentence(e)
    assert "p=0.0496" in text and "partial eta²=0.0099" in text and "0.010" not in text
    assert text.startswith("gamma: detectable but negligible (")


def test_markdown_answers_does_each_factor_matter(grid):
    g, cells, _, result = grid
    md = (g / "summary.md").read_text()
    assert md == result.markdown
    assert f"**Cells:** {len(cells)} in all: {len(cells)} complete." in md
    assert "$0.50 of the $10.00 cap (5%)" in md
    assert "- bce_weight: no detectable effect on validation Dice (F=" in md
    assert "- lr: matters (F=" in md and "large; n=108); best level 0.0025 (mean Dice" in md
    assert "| full-area |" in md and str(g / "best") in md
    for b in result.best:
        assert b.id in md
    # One sentence per factor, largest effect first, each with its lead, interval and plot.
    answers = [line for line in md.splitlines() if line.startswith("- ") and ": " in line and "(F=" in line]
    etas = [next(e for e in result.effects if e.stratum == "all" and line[2:].startswith(e.factor + ":"))
            .partial_eta_sq for line in answers]  # fmt: skip
    assert len(answers) == 4 and etas == sorted(etas, reverse=True)
    lr = next(line for line in answers if line.startswith("- lr:"))
    assert "Dice over 0.00375, 95% CI +0.0" in lr and lr.endswith("see plots/dice_by_lr.png")
    assert "## Does the effect differ between strata?" in md and "| lr |" in md


def test_sentences_for_untestable_and_na_effects():
    tiny = rows_of([0.60, 0.61, 0.62, 0.80, 0.81, 0.82], [0.5, 0.5, 0.5, 0.75, 0.75, 0.75])
    e = next(e for e in stats.effects(tiny) if e.stratum == "all")
    text = report.effect_sentence(e)
    assert text.startswith("bce_weight: cannot be tested at this size (smallest attainable p = 0.100 > alpha over 20")
    assert "best level 0.75 (mean Dice 0.8100, +0.2000 Dice over 0.5" in text
    flat = rows_of([0.7, 0.7, 0.7, 0.7], [0.5, 0.5, 0.75, 0.75])
    e = next(e for e in stats.effects(flat) if e.stratum == "all")
    assert report.effect_sentence(e).startswith("bce_weight: n/a (")


def test_console_table_sorted_with_counts_and_paths(grid):
    g, cells, rows, _ = grid
    text = report.console_table(rows, limit=5, grid_dir=g)
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["#", "mean"]
    shown = [float(line.split()[1]) for line in lines[1:6]]
    assert shown == sorted(shown, reverse=True)
    assert shown[0] == round(max(r["mean_dice"] for r in rows), 4)
    assert f"... {len(cells) - 5} more cells in summary.csv" in text
    assert f"cells: {len(cells)} total, {len(cells)} complete" in text
    assert str(g / "summary.csv") in text and "best full-area:" in text
