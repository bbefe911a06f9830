"""Metric functions against values derived by hand (comments show the derivation)."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from core.evaluation import metrics


def test_normalized_probability():
    # NLL = 3 ln 2 over 3 tokens: per-token probability 1/2.
    assert metrics.normalized_probability([3 * math.log(2)], [3])[0] == pytest.approx(0.5)
    assert metrics.normalized_probability(0.0, 5) == pytest.approx(1.0)


def avg_nll(p: float) -> float:
    """The average NLL of a sequence whose per-token probability is p."""
    return -math.log(p)


def test_truth_ratio_from_known_probabilities():
    # Sample 1: perturbed 0.2 and 0.4 (mean 0.3), paraphrased 0.5 -> R = 0.6.
    # Sample 2: perturbed 0.8 and 0.4 (mean 0.6), paraphrased 0.3 -> R = 2.
    ratios = metrics.truth_ratio(
        [[avg_nll(0.2), avg_nll(0.4)], [avg_nll(0.8), avg_nll(0.4)]],
        [avg_nll(0.5), avg_nll(0.3)],
    )
    assert ratios == pytest.approx([0.6, 2.0])
    # Forget side mean(min(R, 1/R)) = (0.6 + 0.5) / 2; retain side mean(max(0, 1-R)) =
    # (0.4 + 0) / 2.
    assert metrics.truth_ratio_forget_score(ratios) == pytest.approx(0.55)
    assert metrics.truth_ratio_retain_score(ratios) == pytest.approx(0.2)


def test_truth_ratio_does_not_underflow():
    # avgNLL 800 on both sides: exp(-800) underflows to 0, the ratio is still 1.
    assert metrics.truth_ratio([[800.0, 800.0]], [800.0])[0] == pytest.approx(1.0)


def test_forget_quality_identical_samples_is_one():
    ratios = [0.3, 0.5, 0.9, 1.2, 2.0]
    assert metrics.forget_quality(ratios, ratios) == pytest.approx(1.0)


def test_forget_quality_fully_separated_small_samples_exact_value():
    # D = 1 for completely separated samples of sizes 3 and 3. Under H0 every one of the
    # C(6, 3) = 20 interleavings is equally likely, and exactly 2 (all of one sample
    # below all of the other, either way round) reach D = 1: p = 2/20.
    assert metrics.forget_quality([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)
    # Sizes 2 and 2: 2 / C(4, 2) = 1/3.
    assert metrics.forget_quality([0.1, 0.2], [5.0, 7.0]) == pytest.approx(1 / 3)


def test_harmonic_mean_and_model_utility():
    # 2 / (1/1 + 1/0.5) = 2/3
    assert metrics.harmonic_mean([1.0, 0.5]) == pytest.approx(2 / 3)
    # 3 / (2 + 2 + 4) = 0.375
    assert metrics.harmonic_mean([0.5, 0.5, 0.25]) == pytest.approx(0.375)
    assert metrics.harmonic_mean([0.9, 0.0, 0.8]) == 0.0
    per_set = {"retain": {"probability": 0.5, "rouge_recall": 1.0}, "world": {"p": 0.25}}
    # 3 / (2 + 1 + 4) = 3/7: one harmonic mean over all sets' values, not a mean of means.
    assert metrics.model_utility(per_set) == pytest.approx(3 / 7)
    with pytest.raises(ValueError):
        metrics.harmonic_mean([])


def test_rouge_l_by_hand():
    # LCS("the cat is on the mat", "the cat sat on the mat") = "the cat on the mat" (5
    # words); both have 6 words: recall = precision = F1 = 5/6.
    recall, f1 = metrics.rouge_l("the cat sat on the mat", "the cat is on the mat")
    assert recall == pytest.approx(5 / 6)
    assert f1 == pytest.approx(5 / 6)
    # prediction "the cat", reference of 4 words: recall 2/4, precision 2/2,
    # F1 = 2 * 0.5 * 1 / 1.5 = 2/3.
    recall, f1 = metrics.rouge_l("the cat", "the cat sat down")
    assert (recall, f1) == pytest.approx((0.5, 2 / 3))
    # Stemming: "cats running" ~ "cat run"; punctuation and case are ignored.
    assert metrics.rouge_l("Cats running.", "cat run") == pytest.approx((1.0, 1.0))
    assert metrics.rouge_l("", "anything") == (0.0, 0.0)


def test_extraction_strength_and_exact_memorization():
    answer = [5, 6, 7, 8]
    # all tokens predicted: k = 0 -> 1
    assert metrics.extraction_strength([5, 6, 7, 8], answer) == 1.0
    # first token wrong: the suffix from k = 1 matches -> 1 - 1/4
    assert metrics.extraction_strength([9, 6, 7, 8], answer) == 0.75
    # third wrong: k = 3 -> 1 - 3/4
    assert metrics.extraction_strength([5, 6, 9, 8], answer) == 0.25
    # last wrong: even the empty suffix is needed, k = 4 -> 0
    assert metrics.extraction_strength([5, 6, 7, 9], answer) == 0.0
    assert metrics.exact_memorization([5, 6, 9, 8], answer) == 0.75
    assert metrics.exact_memorization([0, 0, 0, 8], answer) == 0.25
    with pytest.raises(ValueError):
        metrics.extraction_strength([1, 2], answer)


def test_min_k_takes_the_lowest_fraction():
    logprobs = [-1.0, -5.0, -2.0, -4.0, -3.0]
    # 40% of 5 tokens = 2 lowest: -5, -4
    assert metrics.min_k_score(logprobs, 0.4) == pytest.approx(-4.5)
    # int(5 * 0.1) = 0, but at least one token: -5
    assert metrics.min_k_score(logprobs, 0.1) == pytest.approx(-5.0)
    assert metrics.min_k_score(logprobs, 1.0) == pytest.approx(-3.0)


def test_min_k_plus_plus_on_a_hand_made_distribution():
    # Next-token distribution p = (1/2, 1/4, 1/4), log p = (-l, -2l, -2l) with l = ln 2.
    # mu = sum p log p = -l/2 - l/4 * 2 * 2 = -1.5 l
    # E[(log p)^2] = l^2/2 + 2 * (4 l^2)/4 = 2.5 l^2, var = 2.5 l^2 - 2.25 l^2 = l^2/4
    # sigma = l/2. Token 0: (-l + 1.5l) / (l/2) = +1; token 1: (-2l + 1.5l)/(l/2) = -1.
    ln2 = math.log(2)
    p = np.array([0.5, 0.25, 0.25])
    mu = float(np.sum(p * np.log(p)))
    sigma = math.sqrt(float(np.sum(p * np.log(p) ** 2)) - mu**2)
    assert mu == pytest.approx(-1.5 * ln2)
    assert sigma == pytest.approx(ln2 / 2)
    # Three positions with this distribution; observed tokens 0, 1, 0.
    token_logprobs = [-ln2, -2 * ln2, -ln2]
    standardized = [1.0, -1.0, 1.0]
    assert metrics.min_k_plus_plus_score(token_logprobs, [mu] * 3, [sigma] * 3, 1.0) == (
        pytest.approx(np.mean(standardized))
    )
    # lowest 40% of 3 = 1 token: -1
    assert metrics.min_k_plus_plus_score(token_logprobs, [mu] * 3, [sigma] * 3, 0.4) == (
        pytest.approx(-1.0)
    )
    # A one-hot distribution: log p = mu = 0, sigma = 0 -> 0, not NaN.
    assert metrics.min_k_plus_plus_score([0.0], [0.0], [0.0], 1.0) == 0.0


def test_loss_and_zlib_scores_point_members_up():
    assert metrics.loss_score(0.5) > metrics.loss_score(2.0)
    text = "the same words " * 10
    assert metrics.zlib_score(2.0, text) == pytest.approx(-2.0 / len(zlib.compress(text.encode())))


def test_roc_auc_with_ties():
    assert metrics.roc_auc([3, 2, 1], [0, 0, 0]) == 1.0
    assert metrics.roc_auc([0, 0], [1, 2]) == 0.0
    # pairs (member, non-member): (1,2)=0 (1,3)=0 (2,2)=1/2 (2,3)=0 -> 0.5 / 4
    assert metrics.roc_auc([1, 2], [2, 3]) == pytest.approx(0.125)
    assert metrics.roc_auc([1, 1], [1, 1]) == pytest.approx(0.5)
    # (5 > 1, 5 > 3, 3 = 3 -> 1/2, 3 > 1): 3.5 / 4
    assert metrics.roc_auc([5, 3], [1, 3]) == pytest.approx(0.875)


def test_privleak_arithmetic():
    assert metrics.privleak(0.75, 0.5) == pytest.approx(50.0)
    assert metrics.privleak(0.4, 0.5) == pytest.approx(-20.0)
    assert metrics.privleak(0.5, 0.5) == 0.0
    with pytest.raises(ValueError):
        metrics.privleak(0.5, 0.0)


def test_quantile_bins_keep_ties_together():
    assert metrics.quantile_bins([1, 2, 3, 4]).tolist() == [0, 1, 2, 3]
    assert metrics.quantile_bins([4, 3, 2, 1, 8, 7, 6, 5]).tolist() == [1, 1, 0, 0, 3, 3, 2, 2]
    # Four equal values and one larger: the equal ones share the lowest bin.
    assert metrics.quantile_bins([1, 1, 1, 1, 5]).tolist() == [0, 0, 0, 0, 3]
