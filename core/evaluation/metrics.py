"""Evaluation metrics as pure functions on numbers and arrays (numpy/scipy, no torch).

Definitions follow TOFU (probability, truth ratio, forget quality, model utility),
MUSE (VerbMem, KnowMem, PrivLeak) and the membership-inference literature (loss, zlib,
Min-K%, Min-K%++). Model-side statistics (NLLs, token log-probs, argmax predictions)
come from :mod:`core.evaluation.scoring`; everything here is testable by hand.

Membership-inference scores are oriented so that higher means "more likely a member",
and AUC is ``P(score_forget > score_holdout)``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np
from scipy import special, stats

MIA_ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus")
DEFAULT_MIN_K_FRACTION = 0.4


# --- likelihood-based -------------------------------------------------------------------


def normalized_probability(nll, n_tokens) -> np.ndarray:
    """Length-normalized answer probability ``p(y|x)^(1/|y|) = exp(-NLL/|y|)``."""
    nll = np.asarray(nll, dtype=np.float64)
    n_tokens = np.asarray(n_tokens, dtype=np.float64)
    return np.exp(-nll / n_tokens)


def truth_ratio(perturbed_avg_nll, paraphrased_avg_nll) -> np.ndarray:
    """Per-sample truth ratio ``mean_i exp(-avgNLL(pert_i)) / exp(-avgNLL(para))``.

    ``perturbed_avg_nll`` is ``[N, P]`` (P wrong answers per question), ``paraphrased_
    avg_nll`` is ``[N]``. Computed in log space so that large NLLs do not underflow:
    ``log tr = logsumexp(-pert) - log P + para``.
    """
    perturbed = np.asarray(perturbed_avg_nll, dtype=np.float64)
    paraphrased = np.asarray(paraphrased_avg_nll, dtype=np.float64)
    if perturbed.ndim != 2 or perturbed.shape[0] != paraphrased.shape[0]:
        raise ValueError("perturbed_avg_nll must be [N, P] and paraphrased_avg_nll [N]")
    log_mean_perturbed = special.logsumexp(-perturbed, axis=1) - math.log(perturbed.shape[1])
    return np.exp(log_mean_perturbed + paraphrased)


def truth_ratio_forget_score(ratios) -> float:
    """Forget side: ``mean(min(tr, 1/tr))``; 1 when wrong and right answers are equally
    likely (nothing known), towards 0 when the model strongly prefers either."""
    ratios = np.asarray(ratios, dtype=np.float64)
    return float(np.mean(np.minimum(ratios, 1.0 / ratios)))


def truth_ratio_retain_score(ratios) -> float:
    """Retain side: ``mean(max(0, 1 - tr))``; 1 when the right answer dominates."""
    ratios = np.asarray(ratios, dtype=np.float64)
    return float(np.mean(np.maximum(0.0, 1.0 - ratios)))


def forget_quality(unlearned_ratios, oracle_ratios) -> float:
    """TOFU forget quality: two-sample KS test p-value between the truth ratios of the
    unlearned model and of a model never trained on the forget set (same questions).

    High (near 1) means the two distributions cannot be told apart; near 0 means the
    unlearned model still behaves unlike the retrained one.
    """
    unlearned = np.asarray(unlearned_ratios, dtype=np.float64)
    oracle = np.asarray(oracle_ratios, dtype=np.float64)
    if unlearned.size == 0 or oracle.size == 0:
        raise ValueError("forget quality needs at least one truth ratio on each side")
    return float(stats.ks_2samp(unlearned, oracle).pvalue)


def harmonic_mean(values: Iterable[float]) -> float:
    """``n / sum(1/v)``; 0 as soon as one value is 0 (the TOFU convention: a model that
    fails one utility aspect entirely has no utility)."""
    values = np.asarray(list(values), dtype=np.float64)
    if values.size == 0:
        raise ValueError("harmonic mean of no values")
    if np.any(values < 0):
        raise ValueError("harmonic mean needs non-negative values")
    if np.any(values == 0):
        return 0.0
    return float(values.size / np.sum(1.0 / values))


def model_utility(per_set: dict[str, dict[str, float]]) -> float:
    """TOFU model utility: harmonic mean of every set's utility values (probability,
    ROUGE-L recall, truth-ratio retain score: 3 per retain/utility set)."""
    return harmonic_mean(v for values in per_set.values() for v in values.values())


def flat_utility(per_set: dict[str, dict[str, float]]) -> dict[str, float]:
    """Model utility's values keyed ``set/component`` (``retain/probability``,
    ``utility/world_facts/truth_ratio``)."""
    return {
        f"{name}/{key}": value for name, values in per_set.items() for key, value in values.items()
    }


def utility_parts(
    per_set: dict[str, dict[str, float]], original: dict[str, dict[str, float]]
) -> dict[str, float]:
    """Each utility value over the original's, keyed as ``flat_utility``: which part of
    model utility a model lost, which the ratio of the harmonic means hides."""
    theirs = flat_utility(original)
    return {
        part: value / theirs[part]
        for part, value in flat_utility(per_set).items()
        if theirs.get(part)
    }


def utility_weights(per_set: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each value's share of model utility's sensitivity: a harmonic mean moves by
    ``sum(w_i * dv_i / v_i)`` with ``w_i = (1 / v_i) / sum_j(1 / v_j)``, so the smallest
    values weigh most (a truth-ratio score near 0.1 beside probabilities near 1 carries
    most of it)."""
    flat = {part: value for part, value in flat_utility(per_set).items() if value and value > 0}
    total = sum(1.0 / value for value in flat.values())
    return {key: (1.0 / value) / total for key, value in flat.items()}


# --- generation-based -------------------------------------------------------------------


@lru_cache(maxsize=1)
def _rouge_scorer():
    """rouge_score's ROUGE-L with its default tokenizer and Porter stemmer
    (``use_stemmer=True``), the stemmer memoized: stemming is most of ROUGE's time and
    evaluation texts repeat the same words."""
    from nltk.stem import porter
    from rouge_score import rouge_scorer, tokenize, tokenizers

    class CachedStemmer:
        def __init__(self):
            self.stem = lru_cache(maxsize=200_000)(porter.PorterStemmer().stem)

    class StemmingTokenizer(tokenizers.Tokenizer):
        def __init__(self):
            self._stemmer = CachedStemmer()

        def tokenize(self, text):
            return tokenize.tokenize(text, self._stemmer)

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=StemmingTokenizer())


def rouge_l(prediction: str, reference: str) -> tuple[float, float]:
    """``(recall, f1)`` of ROUGE-L (longest common subsequence over stemmed words):
    recall = LCS / |reference|, F1 = 2 P R / (P + R)."""
    score = _rouge_scorer().score(reference, prediction)["rougeL"]
    return float(score.recall), float(score.fmeasure)


def extraction_strength(predicted_ids: Sequence[int], answer_ids: Sequence[int]) -> float:
    """``1 - k/|y|`` for the smallest k such that the teacher-forced greedy predictions
    equal the answer from position k on (1: every token predicted; 0: not even the
    last one)."""
    predicted = np.asarray(predicted_ids)
    answer = np.asarray(answer_ids)
    if predicted.shape != answer.shape or answer.size == 0:
        raise ValueError("predictions and answer must be non-empty and of equal length")
    mismatches = np.flatnonzero(predicted != answer)
    k = 0 if mismatches.size == 0 else int(mismatches[-1]) + 1
    return 1.0 - k / answer.size


def exact_memorization(predicted_ids: Sequence[int], answer_ids: Sequence[int]) -> float:
    """Fraction of answer tokens whose teacher-forced argmax is the true token."""
    predicted = np.asarray(predicted_ids)
    answer = np.asarray(answer_ids)
    if predicted.shape != answer.shape or answer.size == 0:
        raise ValueError("predictions and answer must be non-empty and of equal length")
    return float(np.mean(predicted == answer))


# --- membership inference ---------------------------------------------------------------


def loss_score(avg_nll: float) -> float:
    """Loss attack: members have low loss, so the score is ``-avgNLL``."""
    return -float(avg_nll)


def zlib_score(avg_nll: float, text: str) -> float:
    """zlib attack (Carlini et al.): loss divided by the zlib-compressed length of the
    text, so that texts that are simply easy to compress are not taken for members.
    Negated: higher = member."""
    compressed = len(zlib.compress(text.encode("utf-8")))
    return -float(avg_nll) / compressed


def _lowest_k_mean(values: np.ndarray, k: float) -> float:
    if not 0 < k <= 1:
        raise ValueError("k must be in (0, 1]")
    if values.size == 0:
        raise ValueError("no tokens")
    count = max(1, int(values.size * k))
    return float(np.mean(np.sort(values)[:count]))


def min_k_score(token_logprobs, k: float = DEFAULT_MIN_K_FRACTION) -> float:
    """Min-K% (Shi et al.): mean of the lowest ``k`` fraction of token log-probs (at
    least one token). Members have fewer surprising tokens, so higher = member."""
    return _lowest_k_mean(np.asarray(token_logprobs, dtype=np.float64), k)


def min_k_plus_plus_score(
    token_logprobs, mean_logprobs, std_logprobs, k: float = DEFAULT_MIN_K_FRACTION
) -> float:
    """Min-K%++ (Zhang et al.): each token log-prob standardized by the mean ``mu = sum
    p log p`` and std of ``log p`` under the model's own next-token distribution at that
    position, ``(log p(x_t) - mu_t) / sigma_t``, then the mean of the lowest ``k``."""
    logprobs = np.asarray(token_logprobs, dtype=np.float64)
    mu = np.asarray(mean_logprobs, dtype=np.float64)
    sigma = np.asarray(std_logprobs, dtype=np.float64)
    # A one-hot distribution has sigma 0 and log p = mu: score 0 rather than 0/0.
    standardized = (logprobs - mu) / np.maximum(sigma, 1e-12)
    return _lowest_k_mean(standardized, k)


def roc_auc(member_scores, nonmember_scores) -> float:
    """ROC AUC = ``P(member score > non-member score)``, ties counted half; the
    Mann-Whitney U statistic of the members divided by ``n1 n2``."""
    members = np.asarray(member_scores, dtype=np.float64)
    nonmembers = np.asarray(nonmember_scores, dtype=np.float64)
    if members.size == 0 or nonmembers.size == 0:
        raise ValueError("AUC needs scores on both sides")
    u = stats.mannwhitneyu(members, nonmembers, alternative="two-sided").statistic
    return float(u / (members.size * nonmembers.size))


def privleak(auc_unlearned: float, auc_oracle: float) -> float:
    """MUSE PrivLeak: ``(AUC_unlearned - AUC_oracle) / AUC_oracle * 100``. 0 = as
    private as retraining; large positive = forget data still detectable as trained on;
    large negative = over-unlearned (suspiciously unlike other data)."""
    if auc_oracle <= 0:
        raise ValueError("PrivLeak is undefined when the oracle's AUC is 0")
    return (auc_unlearned - auc_oracle) / auc_oracle * 100.0


# --- strata -----------------------------------------------------------------------------


def quantile_bins(values, n_bins: int = 4) -> np.ndarray:
    """Bin index (0 .. n_bins-1) of each value by its quantiles. Equal values always
    share a bin, so with many ties some bins are smaller or empty rather than splitting
    identical samples arbitrarily."""
    values = np.asarray(values, dtype=np.float64)
    edges = np.quantile(values, np.arange(1, n_bins) / n_bins)
    # side="left": a value equal to an edge stays in the lower bin.
    return np.searchsorted(edges, values, side="left")
