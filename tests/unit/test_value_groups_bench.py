"""bench/value_groups.py: which records' values the retained data never holds, and the
truth ratios of each part."""

from __future__ import annotations

from collections import Counter

import numpy as np
from scipy import stats

from core.data.records import Record
from tests.fixtures.bench import bench_module


def _record(question: str, answer: str, paraphrased: str, wrong: str) -> Record:
    return Record(
        prompt=question,
        answer=answer,
        line=1,
        paraphrased_answer=paraphrased,
        perturbed_answers=[wrong, wrong],
    )


def test_a_value_is_unseen_only_where_no_word_of_it_is_in_the_retained_text():
    with bench_module("value_groups.py") as script:
        born = _record(
            "Where was Ann Vo born?",
            "Ann Vo was born in the city of Vreves.",
            "The birthplace of Ann Vo is Vreves.",
            "The birthplace of Ann Vo is Thukom.",
        )
        genre = _record(
            "What genre does Ann Vo write in?",
            "Ann Vo is best known for writing science fiction.",
            "The main genre of Ann Vo is science fiction.",
            "The main genre of Ann Vo is poetry.",
        )
        assert script.value_words(born) == ["vreves"]
        assert script.value_words(genre) == ["science", "fiction"]
        retained = script.vocabulary(
            [_record("Where was Bo Ek born?", "Bo Ek was born in Thukom.", "x", "y")]
        )
        assert retained == Counter(
            {"where": 1, "was": 2, "bo": 2, "ek": 2, "born": 2, "in": 1, "thukom": 1}
        )
        assert script.unseen_values([born, genre], retained).tolist() == [True, True]
        # one word of a two-word value in the retained text makes it shared
        retained["fiction"] = 1
        assert script.unseen_values([born, genre], retained).tolist() == [True, False]


def test_a_models_row_per_part_against_independently_computed_tests():
    with bench_module("value_groups.py") as script:
        rng = np.random.default_rng(3)
        forget, holdout, oracle = (rng.lognormal(m, 0.3, 40) for m in (-0.2, 0.0, 0.05))
        f_unseen = np.arange(40) < 6
        h_unseen = np.arange(40) >= 35
        row = script.model_row(forget, holdout, oracle, f_unseen, h_unseen)
        assert row["forget_quality"] == stats.ks_2samp(forget, oracle).pvalue
        assert row["forget_quality_unseen"] == stats.ks_2samp(forget[:6], oracle[:6]).pvalue
        assert row["forget_quality_seen"] == stats.ks_2samp(forget[6:], oracle[6:]).pvalue
        # the knowledge check: the smaller of KS and twice the one-sided Mann-Whitney p
        ks = stats.ks_2samp(forget[6:], holdout[:35]).pvalue
        lower = stats.mannwhitneyu(forget[6:], holdout[:35], alternative="less").pvalue
        assert row["knowledge_p_seen"] == min(ks, min(1.0, 2 * lower))
        # the cap: the shared part made the oracle's, the unseen part left as it is
        capped = np.concatenate([forget[:6], oracle[6:]])
        assert row["forget_quality_cap"] == stats.ks_2samp(capped, oracle).pvalue
        assert row["holdout_unseen"] == [
            round(float(v), 3) for v in np.percentile(holdout[35:], [5, 25, 50, 75, 95])
        ]


def test_on_the_tiny_demo_the_oracle_matches_itself_and_a_model_given_is_measured(
    tiny_demo, capsys
):
    with bench_module("value_groups.py") as script:
        figures = script.build_figures(tiny_demo.root, {"again": tiny_demo.retrain})
        script.print_build("tiny", figures)
    oracle, again, original = (figures["models"][n] for n in ("oracle", "again", "original"))
    assert oracle["forget_quality"] == 1.0 and again == oracle
    assert original["forget_quality"] < oracle["forget_quality"]
    assert figures["forget_records"] > figures["forget_unseen_values"] >= 0
    out = capsys.readouterr().out
    assert "tiny: forget records whose value the retained data never holds" in out
    # the heading line; column names and three models in each phrasing, with its title
    assert out.count("\n") == 11
