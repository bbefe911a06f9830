"""The forgetting verdict: does the model treat the forget set like data it never saw?

No retrained model is needed. The comparison is with a **holdout** set: records of the
same form as the forget set that the model never trained on (questions about people
who were never in the training data). A model that never saw the forget set treats
both alike; one that still knows it does not, and neither does one that over-forgot
(pushed the forget answers far below anything it never saw: that too tells an
attacker which records were there).

Checks, each with its threshold (``Check.passed``):

- ``knowledge``: two-sample KS and Mann-Whitney tests of the model's own truth ratios
  (right vs wrong values in a paraphrased answer) on forget vs holdout records: the
  smaller p >= threshold. This
  is what the oracle's forget quality measures, without the oracle: validated on the
  mini-TOFU trajectories (``bench/verdict_validation.py``, docs/verdict.md).
- ``membership``: the loss-attack membership-inference AUC, forget vs holdout: above
  ``0.5 + margin`` the forget answers are still likelier than unseen ones (remembered:
  fails). Below ``0.5 - margin`` they are *less* likely than unseen ones: the content is
  gone, but that it was removed is detectable (over-forgetting, PrivLeak far below 0).
  That is flagged in the verdict (``over_forgotten``) and fails it, unless the target
  asks for ``membership: one_sided``. Over-forgetting is a leak (PrivLeak -87 tells an
  attacker as much as +87), and it is where the knowledge test is least trustworthy: on
  the mini-TOFU benchmark every point it passed at oracle forget quality below 0.05 had a
  membership AUC below 0.3, and a job stopped there (docs/verdict.md).
- ``utility``: model utility at or above the floor (a fraction of the original's).
- ``relearning`` (when measured): after a short fine-tune on part of the forget set,
  the rest is at most ``RELEARN_MAX_RATIO`` times as likely as the holdout's unseen part
  after the same fine-tune on the holdout's other part (the model's own reference for
  data it never saw: ``core.evaluation.relearn.relearn_probability``).
- ``confirmation`` (jobs with a target that asks ``confirm_points`` > 1): the verdict
  said forgotten at that many evaluation points in a row, ending at the published one.

The verdict is ``forgotten`` when every check passes, ``not_forgotten`` when one fails,
and ``not_verifiable`` when there is no holdout set (or no truth-ratio fields, for the
knowledge check) and so nothing to compare with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from core.evaluation import metrics

#: the membership check's margin around 0.5 (an oracle measures 0.47 on mini-TOFU)
MEMBERSHIP_MARGIN = 0.2
#: the relearning check: after the attack, unseen forget records at most this many times
#: as likely as unseen holdout records after the same attack on the other holdout
#: records. The reference is measured on the model itself because the transfer between
#: questions about the same subject is the model's (a retrained model, against plain
#: holdout records: 1.2-1.4x on the Llama benchmarks, 3.0x on the GPT-2 one). Set from
#: both error rates under five attack splits each (bench/relearn_check.py, docs/verdict.md,
#: stop 42): perfect forgetting (oracles and retrains of other seeds) read 0.62-1.91x on
#: the Llama and GPT-2 benchmarks, the default jobs' models that kept the answers
#: 2.44-5.87x; 1.5 (issue 8's tolerance against the oracle, until stop 42) failed 11 of 15
#: GPT-2 retrain splits, and so every GPT-2 retrain's verdict. Over-forgotten models read
#: below 1 and are refused by the membership check instead.
RELEARN_MAX_RATIO = 2.0
STATUSES = ("forgotten", "not_forgotten", "not_verifiable")

HOLDOUT_HELP = (
    "give evaluation.holdout: records of the same form as the forget set that the model "
    "never trained on (e.g. the same questions about people who were never in its data), "
    "with paraphrased_answer and perturbed_answer for the knowledge test"
)


@dataclass
class Check:
    name: str
    label: str
    value: float | None
    threshold: float | str
    passed: bool | None
    description: str
    #: a warning that does not fail the check (``over_forgotten``)
    flag: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Verdict:
    status: str
    reason: str
    checks: list[Check] = field(default_factory=list)

    @property
    def forgotten(self) -> bool | None:
        return {"forgotten": True, "not_forgotten": False}.get(self.status)

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "forgotten": self.forgotten,
            "reason": self.reason,
            "checks": [c.to_dict() for c in self.checks],
        }


def knowledge_check(forget_tr, holdout_tr, threshold: float) -> Check:
    """The model's own truth ratios, forget vs holdout, by two tests: Kolmogorov-Smirnov
    (any difference in shape, either way) and Mann-Whitney (a shift of one against the
    other) counted in one direction only, forget ratios below the holdout's (the model
    still prefers the right answers): twice its one-sided p-value, which is the
    two-sided one where the shift goes that way and 1 where it goes the other. The
    smaller p-value is the check's. KS alone is slow to see a shift: on the Llama
    benchmark a job was met at KS p 0.24-0.31 while the model still preferred the right
    answers a little more on forget questions than on unseen ones (median truth ratio
    0.96 vs 1.00; Mann-Whitney p 0.066) and the oracle's forget quality was 0.0017
    (docs/minitofu.md, stop 36). A shift the other way is what a model that never saw
    the forget set shows where the forget records' wrong answers happen to be likelier
    than the holdout's: the retrain oracles of two of the three Llama benchmark builds
    failed a two-sided test (p 0.094, 0.155) with forget median ratios 1.05-1.06 against
    1.00-1.01 (docs/verdict.md, stop 37); KS still fails a large difference either way.
    Of two samples from one distribution the check fails 21% at 0.2 (KS alone 17.5%, a
    two-sided Mann-Whitney beside it 24%: ``bench/knowledge_null.py``)."""
    ks = float(stats.ks_2samp(forget_tr, holdout_tr).pvalue)
    lower = float(stats.mannwhitneyu(forget_tr, holdout_tr, alternative="less").pvalue)
    shift = min(1.0, 2.0 * lower)
    p = min(ks, shift)
    return Check(
        name="knowledge",
        label="forget vs holdout truth ratios (the smaller of the KS and Mann-Whitney "
        "p-values, the latter for forget ratios lower)",
        value=p,
        threshold=threshold,
        passed=p >= threshold,
        description="Whether the model prefers the right answer over wrong ones on forget "
        "questions as it does on questions it never saw; low means it still knows.",
    )


def membership_check(
    forget_scores, holdout_scores, margin: float = MEMBERSHIP_MARGIN, *, two_sided: bool = False
) -> Check:
    """Loss-attack AUC, forget vs holdout: near 0.5 when they look alike; above the band
    fails (remembered); below it is flagged, and fails when ``two_sided``."""
    auc = metrics.roc_auc(forget_scores, holdout_scores)
    over = auc < 0.5 - margin
    return Check(
        name="membership",
        label="membership-inference AUC, forget vs holdout (loss attack)",
        value=auc,
        threshold=f"{0.5 - margin:.2f} to {0.5 + margin:.2f}"
        if two_sided
        else f"at most {0.5 + margin:.2f}",
        passed=auc <= 0.5 + margin and not (two_sided and over),
        description="How well the answers' likelihood tells forget from holdout records: "
        "near 1 they are still remembered; near 0 they were pushed far below unseen data, "
        "which shows that something was removed (over-forgetting, flagged either way).",
        flag="over_forgotten" if over else None,
    )


def utility_check(ratio: float | None, floor: float) -> Check:
    return Check(
        name="utility",
        label="model utility (x the original's)",
        value=ratio,
        threshold=floor,
        passed=None if ratio is None else ratio >= floor,
        description="Retain and utility sets' probability and truth-ratio score"
        " (and ROUGE-L where generated), harmonic mean, against the original model.",
    )


def relearning_check(
    unseen_probability: float, reference_probability: float, *, calibrated: bool = True
) -> Check:
    """``reference_probability``: the holdout's unseen part after the same attack on its
    other part, or (``calibrated=False``, a holdout of one record) the holdout's
    probability after the attack on the forget set."""
    ratio = unseen_probability / max(reference_probability, 1e-12)
    return Check(
        name="relearning",
        label="after a relearning attack: unseen forget vs unseen holdout probability"
        if calibrated
        else "after a relearning attack: unseen forget vs holdout probability",
        value=ratio,
        threshold=RELEARN_MAX_RATIO,
        passed=ratio <= RELEARN_MAX_RATIO,
        description="A short fine-tune on part of the forget set must not bring back the "
        "rest more than the same fine-tune on part of the holdout set brings back the "
        "holdout's rest: knowledge that returns was hidden, not removed.",
    )


def confirmation_check(streak: int, required: int) -> Check:
    """Whether the verdict said forgotten at ``required`` evaluation points in a row,
    ending at the published one (``core.training.target``)."""
    return Check(
        name="confirmation",
        label="evaluation points in a row whose verdict said forgotten",
        value=int(streak),  # counts, shown as such in the report
        threshold=int(required),
        passed=streak >= required,
        description="One passing evaluation point can be the luck of a noisy test on about "
        "a hundred records: the target counts as met only when the verdict held at this "
        "many points in a row, ending at the published one.",
    )


def decide(checks: list[Check], *, missing: str | None = None) -> Verdict:
    """The verdict of a list of checks; ``missing`` says why forgetting is not
    verifiable (no holdout set)."""
    if missing is not None:
        return Verdict("not_verifiable", missing, checks)
    failed = [c for c in checks if c.passed is False]
    unknown = [c for c in checks if c.passed is None]
    if failed:
        # "not confirmed" says nothing new when the points failed for their own reasons
        told = [c for c in failed if c.name != "confirmation"] or failed
        return Verdict("not_forgotten", "; ".join(_failure(c) for c in told), checks)
    if unknown:
        names = ", ".join(c.label for c in unknown)
        return Verdict("not_verifiable", f"not measured: {names}", checks)
    reason = (
        "the model no longer knows the forget answers: it prefers them over wrong ones no "
        "more than on data it never saw"
        + (", utility is above the floor" if any(c.name == "utility" for c in checks) else "")
        + (
            ", and a relearning attack does not bring them back"
            if any(c.name == "relearning" for c in checks)
            else ""
        )
    )
    over = next((c for c in checks if c.flag == "over_forgotten"), None)
    if over is not None:
        reason += (
            "; note that their removal is detectable: the forget answers are less likely "
            f"than unseen data (membership AUC {over.value:.2g})"
        )
    return Verdict("forgotten", reason, checks)


def _failure(check: Check) -> str:
    value = "-" if check.value is None else f"{check.value:.3g}"
    if check.name == "knowledge":
        return (
            f"the model still knows the forget answers (truth-ratio p {value} < {check.threshold})"
        )
    if check.name == "membership":
        if (check.value or 0) > 0.5:
            return (
                f"the forget answers are still likelier than unseen data (membership AUC "
                f"{value}, {check.threshold})"
            )
        return (
            f"the forget answers are far less likely than unseen data, so their removal is "
            f"detectable (membership AUC {value}, {check.threshold})"
        )
    if check.name == "utility":
        return f"utility {value}x is below the floor {check.threshold}x"
    if check.name == "confirmation":
        return (
            f"the verdict said forgotten at {check.value:.0f} evaluation point(s) in a row, "
            f"fewer than the {check.threshold:.0f} that confirm it"
        )
    if check.name == "relearning":
        return (
            f"a relearning attack brings the rest back ({value}x what the same attack "
            f"brings back of unseen holdout records, more than {check.threshold}x)"
        )
    return f"{check.label}: {value}"


def forgetting_checks(
    forget: dict[str, Any] | None,
    holdout: dict[str, Any] | None,
    *,
    threshold: float,
    margin: float = MEMBERSHIP_MARGIN,
    two_sided: bool = False,
    holdout_note: str | None = None,
) -> tuple[list[Check], str | None]:
    """The knowledge and membership checks from per-sample columns (``truth_ratio``,
    ``mia_loss``) of the forget and holdout sets. Returns the checks and, when they
    cannot be made, why not. ``holdout_note``: why a holdout set that was given is
    missing (``core.data.holdout``: all of it is trained-on data), said instead of
    "no holdout set"."""
    if holdout is None:
        why = holdout_note or "no holdout set to compare the forget set with"
        return [], f"{why}; {HOLDOUT_HELP}" if holdout_note else f"{why}: {HOLDOUT_HELP}"
    checks = []
    tr_f, tr_h = _finite(forget.get("truth_ratio")), _finite(holdout.get("truth_ratio"))
    if tr_f is not None and tr_h is not None and tr_f.size and tr_h.size:
        checks.append(knowledge_check(tr_f, tr_h, threshold))
    mia_f, mia_h = _finite(forget.get("mia_loss")), _finite(holdout.get("mia_loss"))
    if mia_f is not None and mia_h is not None and mia_f.size and mia_h.size:
        checks.append(membership_check(mia_f, mia_h, margin, two_sided=two_sided))
    if not any(c.name == "knowledge" for c in checks):
        return checks, (
            "the forget or holdout records have no paraphrased/perturbed answers, so the "
            f"knowledge test cannot run: {HOLDOUT_HELP}"
        )
    return checks, None


def oracle_checks(oracle, *, before=None, target=None) -> dict[str, Any] | None:
    """The retrain oracle under the verdict's forgetting checks (knowledge, membership),
    against the same holdout set: what a model that never saw the forget set scores.
    Where the oracle fails them, the forget and holdout records differ by themselves at
    this threshold, and an unlearned model that forgot exactly as well as the oracle
    would be called not forgotten too: on the Llama benchmark stop 36's knowledge check
    failed the oracles of two asset builds of three (docs/verdict.md, stop 37). None
    without an oracle evaluated on a holdout set with truth ratios.

    With the original model's evaluation (``before``), also the oracle's utility as a
    fraction of the original's (``utility_ratio``) beside the floor: retraining without
    the forget set loses utility too (the README demo's oracle keeps 0.905x, under the
    default floor 0.95x), and a floor above it asks an unlearned model for more than
    retraining keeps."""
    if oracle is None or "holdout" not in oracle.sets or "forget" not in oracle.sets:
        return None
    threshold = target.forget_threshold if target is not None else _default_threshold()
    checks, missing = forgetting_checks(
        oracle.sets["forget"].samples,
        oracle.sets["holdout"].samples,
        threshold=threshold,
        two_sided=membership_two_sided(target),
    )
    if missing is not None:
        return None
    verdict = decide(checks)
    base = evaluation_utility(before) if before is not None else None
    ours = evaluation_utility(oracle)
    return {
        "passes": verdict.status == "forgotten",
        "reason": verdict.reason,
        "checks": [c.to_dict() for c in checks],
        "utility_ratio": ours / base if ours is not None and base else None,
        "utility_floor": target.utility_floor if target is not None else _default_floor(),
    }


def _finite(values) -> np.ndarray | None:
    if values is None:
        return None
    array = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    return array[np.isfinite(array)]


def evaluation_utility(result) -> float | None:
    """The verdict's utility of a full evaluation (``EvaluationResult``): TOFU's harmonic
    mean over retain and utility sets of probability, ROUGE-L recall (where the
    evaluation generated) and truth-ratio score: the report's model utility, which is
    what the target's floor promises and what an evaluation point near the floor measures
    (``core.verification.UTILITY_EDGE_BAND``). It left ROUGE-L out until stop 32, when
    the points did not generate: a job then met the floor in the report's model utility
    (0.952x) and failed it in the verdict's (0.949x)."""
    components = {}
    for key, result_set in result.sets.items():
        if key != "retain" and not key.startswith("utility/"):
            continue
        values = {
            "probability": result_set.aggregates.get("probability"),
            "rouge_recall": result_set.aggregates.get("rouge_recall"),
        }
        ratios = result_set.column("truth_ratio")
        if ratios is not None and np.isfinite(ratios).any():
            values["truth_ratio"] = metrics.truth_ratio_retain_score(ratios[np.isfinite(ratios)])
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            components[key] = values
    return metrics.model_utility(components) if components else None


def final_verdict(
    before,
    after,
    *,
    target=None,
    relearning: Check | None = None,
    confirmation: Check | None = None,
    holdout_note: str | None = None,
) -> dict[str, Any]:
    """The verdict of a job's published model from its full evaluation (``after``, with
    the original model ``before`` for utility), plus ``target_met``: True when a target
    was set and the verdict is ``forgotten``."""
    forget = after.sets["forget"].samples
    holdout = after.sets["holdout"].samples if "holdout" in after.sets else None
    threshold = target.forget_threshold if target is not None else _default_threshold()
    checks, missing = forgetting_checks(
        forget,
        holdout,
        threshold=threshold,
        two_sided=membership_two_sided(target),
        holdout_note=holdout_note,
    )
    base, ours = evaluation_utility(before), evaluation_utility(after)
    ratio = ours / base if ours is not None and base else None
    floor = target.utility_floor if target is not None else _default_floor()
    checks.append(utility_check(ratio, floor))
    if relearning is not None:
        checks.append(relearning)
    if confirmation is not None:
        checks.append(confirmation)
    verdict = decide(checks, missing=missing).to_dict()
    verdict["target_met"] = bool(target is not None and verdict["status"] == "forgotten")
    verdict["utility_ratio"] = ratio
    return verdict


def _default_threshold() -> float:
    from core.spec import VERDICT_FORGET_THRESHOLD

    return VERDICT_FORGET_THRESHOLD


def _default_floor() -> float:
    from core.spec import TargetSpec

    return TargetSpec().utility_floor


def membership_two_sided(target) -> bool:
    """Whether over-forgetting fails the membership check: the target's choice, else the
    target default's (jobs without a target are judged by the same rule)."""
    from core.spec import TargetSpec

    membership = target.membership if target is not None else TargetSpec().membership
    return membership == "two_sided"
