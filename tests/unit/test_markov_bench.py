"""bench/markov.py: the chains are the specified ones, sampling follows them, and the
smoke run writes its JSON and plot."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.fixtures.bench import bench_module


@pytest.fixture(scope="module")
def markov():
    with bench_module("markov.py") as module:
        yield module


@pytest.mark.parametrize(
    ("subset", "in_states"),
    [("retain", (0, 1, 2)), ("forget1", (3, 4, 5)), ("forget2", (6, 7, 8))],
)
def test_transition_rows_put_0_8_on_the_subset(markov, subset, in_states):
    matrix = markov.transition_matrix(markov.SUBSETS[subset])
    # 0.8 / 3 = 0.26667 on each in-subset state, 0.2 / 7 = 0.028571 on each other one.
    expected_row = [0.26666667 if s in in_states else 0.02857143 for s in range(10)]
    assert matrix.shape == (10, 10)
    for row in matrix:
        np.testing.assert_allclose(row, expected_row, atol=1e-7)
        assert row.sum() == pytest.approx(1.0)


def test_state_9_is_in_no_subset(markov):
    assert 9 not in {s for states in markov.SUBSETS.values() for s in states}


def test_sampled_transitions_follow_the_subset_chain(markov):
    matrix = markov.transition_matrix(markov.SUBSETS["forget1"])
    rng = np.random.default_rng(0)
    sequences = markov.sample_sequences(matrix, (3, 4, 5), n=3000, length=20, rng=rng)

    assert sequences.shape == (3000, 20)
    assert set(np.unique(sequences[:, 0])) == {3, 4, 5}  # starts inside the subset
    starts = np.bincount(sequences[:, 0], minlength=10) / 3000
    np.testing.assert_allclose(starts[[3, 4, 5]], 1 / 3, atol=0.04)

    current, following = sequences[:, :-1].ravel(), sequences[:, 1:].ravel()
    for state in range(10):
        nexts = following[current == state]
        assert len(nexts) > 400, f"too few visits of state {state} to check its row"
        empirical = np.bincount(nexts, minlength=10) / len(nexts)
        # The rarest rows (out-of-subset states) get ~1600 visits: the standard error of
        # a 0.267 entry is ~0.011, so 0.04 is ~3.5 of them.
        np.testing.assert_allclose(empirical, matrix[state], atol=0.04)
    pooled = np.bincount(following, minlength=10) / len(following)
    np.testing.assert_allclose(pooled, matrix[0], atol=0.01)


def test_gradient_weights_match_the_papers_formulas(markov):
    import torch

    n_tokens = torch.tensor([19, 4])
    nll = torch.tensor([19 * 1.5, 4 * 1.5], requires_grad=True)  # 1.5 nats per token

    npo_loss = markov.forget_loss("npo", nll, n_tokens, nll.detach(), markov.Config())
    # NPO at the reference: 2 * sigmoid(0) = 1 for every sample, whatever its length.
    np.testing.assert_allclose(markov.per_sample_weights(npo_loss, nll), [1.0, 1.0], rtol=1e-6)

    simnpo_loss = markov.forget_loss("simnpo", nll, n_tokens, None, markov.Config())
    # SimNPO, beta 1: (2 / n) * sigmoid(-1.5), sigmoid(-1.5) = 1 / (1 + e^1.5) = 0.182426.
    np.testing.assert_allclose(
        markov.per_sample_weights(simnpo_loss, nll), [0.0192028, 0.0912130], rtol=1e-5
    )


def test_quick_run_writes_json_and_png(markov, tmp_path, capsys):
    out, plot = tmp_path / "results.json", tmp_path / "markov.png"

    markov.main(["--quick", "--out", str(out), "--plot", str(plot)])

    results = json.loads(out.read_text())
    iterations = results["config"]["unlearn_iters"]
    for setting in ("equal_length", "short_forget2"):
        summary = results["summary"][setting]
        for method in ("npo", "simnpo"):
            stats = summary["methods"][method]
            for split in ("retain", "forget1", "forget2"):
                assert np.isfinite(stats[f"kl_true/{split}"]["mean"])
            assert 0 < stats["forget1_mass_share"]["mean"] < 1
            curve = results["per_seed"]["0"][setting]["methods"][method]["curves"]["kl_true"]
            assert len(curve["forget2"]) == iterations + 1  # before + after every step
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "simnpo" in capsys.readouterr().out
