"""The experiment's summary arithmetic on hand-built grid cells (no training needed)."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from tasks.data.training_data import web_subset
from tasks.reporting.experiment import beyond_spread, paired_gains, paper_table, summarise, web_fraction_curve, web_fraction_table

METRICS = ("i2t_r1", "i2t_r5", "i2t_r10", "i2t_medr", "t2i_r1", "t2i_r5", "t2i_r10", "t2i_medr")


def _cells(rsums: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    rows = []
    for (loss, variant), values in rsums.items():
        for seed, rsum in enumerate(values):
            rows.append(
                {
                    "loss": loss,
                    "seed": seed,
                    "variant": variant,
                    "run_dir": "r",
                    "stage": "s",
                    **dict.fromkeys(METRICS, 10.0 + seed),
                    "rsum": rsum,
                }
            )
    return pd.DataFrame(rows)


def test_paired_gains_compare_each_seed_with_its_own_baseline() -> None:
    # seeds differ a lot, the variant is always exactly +2 better: the spread test cannot tell, the pairs can
    table = _cells({("vse", "baseline"): [100.0, 120.0, 140.0], ("vse", "stage1"): [102.0, 122.0, 142.0],
                    ("vse++", "baseline"): [100.0, 100.0, 100.0], ("vse++", "stage1"): [90.0, 120.0, 101.0]})  # fmt: skip
    gains = paired_gains(table, "stage1")
    assert gains["vse"].mean == pytest.approx(2.0) and gains["vse"].std == pytest.approx(0.0)
    assert (gains["vse"].wins, gains["vse"].seeds) == (3, 3)
    assert gains["vse++"].mean == pytest.approx(11.0 / 3) and (gains["vse++"].wins, gains["vse++"].seeds) == (2, 3)
    assert gains["vse++"].std == pytest.approx(pd.Series([-10.0, 20.0, 1.0]).std(ddof=1))
    verdict = beyond_spread(summarise(table), "stage1")
    assert verdict["vse"].startswith("within the seed spread")  # 2 < 20 + 20
    assert "higher in 3 of 3 seeds" in gains["vse"].describe()


def test_paired_gains_skip_a_variant_the_grid_lacks() -> None:
    table = _cells({("vse", "baseline"): [100.0, 120.0]})
    assert paired_gains(table, "stage1") == {}


def test_paper_table_has_recall_at_1_5_10_and_medr_both_ways() -> None:
    summary = summarise(_cells({("vse", "baseline"): [100.0, 110.0]}))
    header, _, row = paper_table(summary).splitlines()
    assert header.count("R@5") == 2 and header.count("MedR") == 2
    assert row.count("±") == 9 and "105.0 ± 7.1" in row


def test_paired_gains_against_another_reference_variant() -> None:
    table = _cells(
        {("vse", "baseline"): [100.0, 100.0], ("vse", "stage1"): [110.0, 120.0], ("vse", "stage2-curriculum"): [109.0, 125.0]}
    )
    gains = paired_gains(table, "stage2-curriculum", reference="stage1")["vse"]
    assert gains.mean == pytest.approx(2.0) and (gains.wins, gains.seeds) == (1, 2)


def test_web_fraction_cells_sort_after_the_paper_variants_and_make_a_curve_from_stage_i() -> None:
    table = _cells({
        ("vse++", "stage2-web50"): [505.0, 507.0, 506.0], ("vse++", "baseline"): [500.0, 502.0, 501.0],
        ("vse++", "stage1"): [503.0, 504.0, 505.0], ("vse++", "stage2-curriculum"): [508.0, 509.0, 507.0],
        ("vse++", "stage2-web25"): [504.0, 504.0, 506.0],
    })  # fmt: skip
    summary = summarise(table)
    assert summary["variant"].tolist() == ["baseline", "stage1", "stage2-curriculum", "stage2-web25", "stage2-web50"]
    assert summary["label"].iloc[3] == "VSE++ + Stage II, curriculum, 25% of the web photos"
    found = web_fraction_curve(table)
    assert found is not None
    loss, curve = found
    assert loss == "vse++" and curve["fraction"].tolist() == [0.0, 0.25, 0.5, 1.0]
    assert curve["rsum"].tolist() == pytest.approx([504.0, 504.6667, 506.0, 508.0], abs=1e-3)
    assert "higher in 3 of 3 seeds" in curve["gain_over_stage1"].iloc[3] and curve["gain_over_stage1"].iloc[0] == ""
    assert "| 0 % (Stage I) | 504.0 ± 1.0 | 3 |" in web_fraction_table(curve)
    assert web_fraction_curve(table[~table["variant"].str.startswith("stage2-web")]) is None


def test_web_subsets_are_nested_and_about_their_share() -> None:
    sha = pd.Series([hashlib.sha256(str(i).encode()).hexdigest() for i in range(4000)])
    quarter, half, everything = web_subset(sha, 0.25), web_subset(sha, 0.5), web_subset(sha, 1.0)
    assert everything.all() and not (quarter & ~half).any()  # 25 % inside 50 %
    assert abs(quarter.mean() - 0.25) < 0.03 and abs(half.mean() - 0.5) < 0.03
    assert (web_subset(sha[::-1].reset_index(drop=True), 0.25) == quarter[::-1]).all()  # by content, not position
    with pytest.raises(ValueError, match="web_fraction must be in"):
        web_subset(sha, 0.0)
