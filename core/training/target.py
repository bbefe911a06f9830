"""When a training run with a target stops, and which of its evaluation points is
published: pure rules over the sequence of points, so they can be tested on
hand-built trajectories.

A point is *met* when its verdict says ``forgotten`` (which includes utility at or
above the floor), and *confirmed* when it ends a run of ``confirm_points`` met points in
a row (``target.confirm_points``, default 2). Why not trust one: the knowledge test is a
KS p-value on about a hundred records per side, and on the mini-TOFU trajectories
(docs/verdict.md) single points passed it at oracle forget quality 0.02-0.04 where the
next point did not; a second look at the next point costs one more verdict probe.
The run stops at the first confirmed point (``stop_when_met``), or once the
run is hopeless: utility has stayed below half the floor for ``COLLAPSE_POINTS``
points in a row (the model is being destroyed, not taught to forget).

The published point (``select_point``):

1. the first confirmed point, when there is one;
2. else, among the points whose utility is at or above the floor, the one that forgets
   best: first the points that pass the knowledge check and whose membership check does
   not say *remembered* (forget answers still likelier than unseen ones), then the
   highest knowledge p-value (forget vs holdout truth ratios), ties broken by the
   membership AUC's closeness to 0.5, then by utility. Why the first tier: the knowledge
   test is lenient on a model whose facts were forgotten in isolation while its answers'
   phrasing is still remembered; under ``forget_tokens: both`` the p-value alone
   published such early points (membership AUC 0.77-0.78, oracle forget quality
   0.18-0.24) over later ones that passed both checks (docs/minitofu.md, stop 32).
   Over-forgotten membership does not demote a point: a model that still prefers the
   true answers leaks the facts, one pushed below unseen data leaks only that something
   was removed. Measured: ranking failed checks first published, on seed 3 of the
   sharpness-aware recipe (docs/minitofu.md), step 104 instead of 200: oracle forget
   quality 2e-5 instead of 4e-4, relearning 1.74x the oracle's instead of 0.77x;
3. else, when the best measured utility is within ``NEAR_FLOOR`` of the floor, that
   point: a near miss, where forgetting went furthest without much damage;
4. else (every measured point is far below the floor: the run damaged the model, and
   typically only the last point was measured, since a point whose retain likelihood is
   below the floor gets no verdict probe), the *light* points whose retain-likelihood
   ratio is at or above the floor, ranked by how close their membership AUC (from the
   training pass) is to 0.5, then by that ratio. Measured on the GPT-2 demo
   (``bench-gpt2``): GradDiff's automatic settings fell to 0.55-0.7x retain likelihood by
   the fifth epoch and were published at step 160 with utility 0.54-0.65x, while the
   points of the first four epochs kept 0.96-0.98x;
5. else the point with the highest utility (measured, or a light point's retain ratio):
   the least damaged model, which the verdict then reports as not forgotten.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

COLLAPSE_POINTS = 3
#: a measured utility this far below the floor is a near miss (rule 3), not damage
NEAR_FLOOR = 0.1

SELECTION_RULE = (
    "the first evaluation point that met the target and confirmed it (the verdict said "
    "forgotten there and at the points just before it, target.confirm_points in all); "
    "else, among points with utility at or above the floor, those that pass the knowledge check and are not still "
    "remembered by the membership check first, then the highest knowledge p-value (forget vs holdout "
    "truth ratios; ties: membership AUC closest to 0.5, then utility); else the measured "
    f"point with the highest utility if it is within {NEAR_FLOOR} of the floor; else, among points "
    "measured only by the training pass whose retain likelihood kept the floor, the one "
    "whose membership AUC is closest to 0.5; else the point with the highest utility"
)


@dataclass
class PointRecord:
    """What the rules need of one evaluation point."""

    step: int
    epoch: float
    verdict: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)

    def check(self, name: str) -> dict[str, Any] | None:
        return next((c for c in self.verdict.get("checks", []) if c["name"] == name), None)

    def value(self, name: str) -> float | None:
        check = self.check(name)
        return None if check is None else check.get("value")

    @property
    def met(self) -> bool:
        return self.verdict.get("status") == "forgotten"

    @property
    def utility_ratio(self) -> float | None:
        return self.value("utility")


def met_streak(points: list[PointRecord], index: int = -1) -> int:
    """How many met points in a row end at ``points[index]``."""
    if not points:
        return 0
    index = index % len(points)
    count = 0
    while index - count >= 0 and points[index - count].met:
        count += 1
    return count


def confirmation(points: list, selected_step: int | None, confirm_points: int):
    """The verdict's ``confirmation`` check of the published point (how many met points
    in a row end at it), or None when one point is trusted (``confirm_points`` 1) or there
    were no points. ``points``: records or their dicts."""
    if confirm_points <= 1 or not points:
        return None
    from core.evaluation.verdict import confirmation_check

    records = [p if isinstance(p, PointRecord) else PointRecord(**p) for p in points]
    index = next((i for i, p in enumerate(records) if p.step == selected_step), None)
    streak = 0 if index is None else met_streak(records, index)
    return confirmation_check(streak, confirm_points)


def should_stop(
    points: list[PointRecord],
    *,
    utility_floor: float,
    stop_when_met: bool,
    confirm_points: int = 1,
) -> str | None:
    """Why the run should stop after the last of ``points``, or None to go on."""
    if not points:
        return None
    if stop_when_met and met_streak(points) >= confirm_points:
        return "target met" + (
            f" and confirmed at {confirm_points} points in a row" if confirm_points > 1 else ""
        )
    recent = points[-COLLAPSE_POINTS:]
    if len(recent) == COLLAPSE_POINTS and all(
        p.utility_ratio is not None and p.utility_ratio < utility_floor / 2 for p in recent
    ):
        return f"utility stayed below {utility_floor / 2:.2f}x for {COLLAPSE_POINTS} points"
    return None


def select_point(
    points: list[PointRecord], *, utility_floor: float, confirm_points: int = 1
) -> PointRecord | None:
    """The point to publish (see the module docstring for the rule)."""
    if not points:
        return None
    confirmed = [p for i, p in enumerate(points) if met_streak(points, i) >= confirm_points]
    if confirmed:
        return confirmed[0]
    at_floor = [
        p for p in points if p.utility_ratio is not None and p.utility_ratio >= utility_floor
    ]
    if at_floor:
        return max(at_floor, key=_forgetting_rank)
    with_utility = [p for p in points if p.utility_ratio is not None]
    least_damaged = max(with_utility, key=lambda p: p.utility_ratio, default=None)
    if least_damaged is not None and least_damaged.utility_ratio >= utility_floor - NEAR_FLOOR:
        return least_damaged
    light = [p for p in points if p.utility_ratio is None and _retain_ratio(p) is not None]
    light_at_floor = [p for p in light if _retain_ratio(p) >= utility_floor]
    if light_at_floor:
        return max(light_at_floor, key=_light_rank)
    estimated = with_utility + light
    if estimated:
        return max(estimated, key=_utility_estimate)
    return points[-1]


def _retain_ratio(point: PointRecord) -> float | None:
    """A light point's utility estimate: the training pass's retain likelihood against
    the original's."""
    return point.metrics.get("retain_ratio")


def _utility_estimate(point: PointRecord) -> float:
    return point.utility_ratio if point.utility_ratio is not None else _retain_ratio(point)


def _light_rank(point: PointRecord) -> tuple[float, float]:
    auc = point.metrics.get("membership_auc")
    return (-1.0 if auc is None else -abs(auc - 0.5), _retain_ratio(point))


def forgets(verdict: dict[str, Any]) -> bool:
    """Rule 2's first tier: the knowledge check passed and the membership check does not
    say *remembered* (it passed, or failed only because the forget answers were pushed
    below unseen ones). ``verdict``: ``Verdict.to_dict()``'s shape."""
    checks = {check["name"]: check for check in verdict.get("checks", [])}
    membership = checks.get("membership") or {}
    remembered = membership.get("passed") is False and membership.get("flag") != "over_forgotten"
    return (checks.get("knowledge") or {}).get("passed") is True and not remembered


def _forgetting_rank(point: PointRecord) -> tuple[bool, float, float, float]:
    knowledge = point.value("knowledge")
    membership = point.value("membership")
    return (
        forgets(point.verdict),
        -1.0 if knowledge is None else knowledge,
        -1.0 if membership is None else -abs(membership - 0.5),
        point.utility_ratio or 0.0,
    )
