"""The stopping and publishing rules of a run with a target, on hand-built trajectories."""

from __future__ import annotations

import pytest

from core.training.target import (
    COLLAPSE_POINTS,
    PointRecord,
    forgets,
    select_point,
    should_stop,
)

FLOOR = 0.95


def point(step, *, status="not_forgotten", knowledge=None, membership=None, utility=None):
    checks = []
    if knowledge is not None:
        checks.append({"name": "knowledge", "value": knowledge})
    if membership is not None:
        checks.append({"name": "membership", "value": membership})
    if utility is not None:
        checks.append({"name": "utility", "value": utility})
    return PointRecord(step=step, epoch=step / 10, verdict={"status": status, "checks": checks})


def test_the_run_stops_at_the_first_point_that_meets_the_target():
    points = [
        point(10, knowledge=0.001, membership=0.95, utility=1.0),
        point(20, status="forgotten", knowledge=0.4, membership=0.5, utility=0.97),
    ]
    assert should_stop(points[:1], utility_floor=FLOOR, stop_when_met=True) is None
    assert should_stop(points, utility_floor=FLOOR, stop_when_met=True) == "target met"
    # stop_when_met False: the run goes on through the budget ...
    assert should_stop(points, utility_floor=FLOOR, stop_when_met=False) is None
    # ... and the first met point is still the one published.
    later = points + [point(30, status="forgotten", knowledge=0.9, membership=0.45, utility=0.99)]
    assert select_point(later, utility_floor=FLOOR).step == 20


def test_a_collapsing_run_stops_after_enough_points_below_half_the_floor():
    low = [point(10 * i, knowledge=0.3, utility=0.3) for i in range(1, COLLAPSE_POINTS + 1)]
    assert should_stop(low[:-1], utility_floor=FLOOR, stop_when_met=True) is None
    reason = should_stop(low, utility_floor=FLOOR, stop_when_met=True)
    assert reason is not None and "utility" in reason
    # one point recovering in between resets the count
    mixed = low[:1] + [point(15, utility=0.9)] + low[1:]
    assert should_stop(mixed, utility_floor=FLOOR, stop_when_met=True) is None


def test_without_a_met_point_the_best_forgetting_above_the_floor_is_published():
    points = [
        point(10, knowledge=0.01, membership=0.9, utility=0.99),
        point(20, knowledge=0.15, membership=0.6, utility=0.96),
        point(30, knowledge=0.15, membership=0.52, utility=0.955),  # same p, closer AUC
        point(40, knowledge=0.6, membership=0.2, utility=0.90),  # forgets best, below floor
    ]
    assert select_point(points, utility_floor=FLOOR).step == 30


def test_knowledge_outranks_a_failed_over_forgotten_membership_check():
    # Without a met point, the model that knows least is published, even if its forget
    # answers sit far below unseen data (a detectable removal) and another point's are
    # in the membership band: the facts are the worse leak.
    over = point(10, knowledge=0.15, membership=0.05, utility=0.97)
    in_band = point(20, knowledge=0.001, membership=0.45, utility=0.99)
    for p, passed in ((over, False), (in_band, True)):
        p.verdict["checks"][1]["passed"] = passed
    assert select_point([over, in_band], utility_floor=FLOOR).step == 10


def test_a_point_passing_knowledge_and_membership_outranks_a_remembered_one_of_higher_p():
    # Under forget_tokens: both, early points had forgotten the facts in isolation
    # (knowledge p 0.6) while membership still recognised the answers (AUC 0.77); a later
    # point passed both checks at a lower p and was the better model (oracle forget
    # quality 0.99 vs 0.24 on the benchmark). Over-forgotten membership does not demote.
    def judged(step, knowledge, membership, *, flag=None):
        p = point(step, knowledge=knowledge, membership=membership, utility=0.97)
        p.verdict["checks"][0]["passed"] = knowledge >= 0.1
        p.verdict["checks"][1].update(passed=abs(membership - 0.5) <= 0.2, flag=flag)
        return p

    remembered = judged(72, 0.6, 0.77)
    both_passed = judged(200, 0.2, 0.45)
    over = judged(240, 0.15, 0.2 - 0.05, flag="over_forgotten")
    knowledge_failed = judged(260, 0.05, 0.5)
    assert select_point([remembered, both_passed], utility_floor=FLOOR).step == 200
    assert select_point([remembered, over], utility_floor=FLOOR).step == 240
    assert select_point([remembered, both_passed, over], utility_floor=FLOOR).step == 200
    # without a point passing knowledge unremembered, the p-value decides as before
    assert select_point([remembered, knowledge_failed], utility_floor=FLOOR).step == 72


def test_the_first_tier_is_knowledge_passed_and_membership_not_remembered():
    # The monitor confirms a point's 32-record utility estimate on 128 records exactly
    # when this says the point would rank first for publishing, met or not.
    def verdict(knowledge_passed, membership_passed, flag=None, status="not_forgotten"):
        checks = [{"name": "knowledge", "value": 0.5, "passed": knowledge_passed}]
        if membership_passed is not None:
            checks.append(
                {"name": "membership", "value": 0.5, "passed": membership_passed, "flag": flag}
            )
        return {"status": status, "checks": checks}

    assert forgets(verdict(True, True, status="forgotten"))
    assert forgets(verdict(True, True))  # e.g. only the relearning check failed
    assert forgets(verdict(True, False, flag="over_forgotten"))
    assert forgets(verdict(True, None))  # no membership figure: nothing says remembered
    assert not forgets(verdict(True, False))  # remembered
    assert not forgets(verdict(False, True))
    assert not forgets(verdict(None, True))  # knowledge not measured
    assert not forgets({"status": "not_forgotten", "checks": []})


def test_ties_in_knowledge_and_membership_go_to_the_higher_utility():
    points = [
        point(10, knowledge=0.3, membership=0.4, utility=0.96),
        point(20, knowledge=0.3, membership=0.6, utility=0.99),
    ]
    assert select_point(points, utility_floor=FLOOR).step == 20


def test_when_no_point_keeps_the_floor_the_least_damaged_one_is_published():
    points = [
        point(10, knowledge=0.001, utility=0.93),
        point(20, knowledge=0.5, utility=0.6),
    ]
    assert select_point(points, utility_floor=FLOOR).step == 10


def test_points_without_a_verdict_probe_rank_below_measured_ones():
    # Light points (no knowledge check) are never preferred to a measured point.
    points = [
        point(10, utility=None),
        point(20, knowledge=0.05, membership=0.7, utility=0.97),
        point(30, utility=None),
    ]
    assert select_point(points, utility_floor=FLOOR).step == 20
    only_light = [point(10), point(20)]
    assert select_point(only_light, utility_floor=FLOOR).step == 20  # the last one
    assert select_point([], utility_floor=FLOOR) is None


def light(step, *, retain, auc):
    """A point measured only by the training pass: retain-likelihood ratio and AUC."""
    return PointRecord(
        step=step,
        epoch=step / 10,
        verdict={"status": "not_forgotten", "checks": []},
        metrics={"measured_by": "light", "retain_ratio": retain, "membership_auc": auc},
    )


def test_a_damaged_run_publishes_the_light_point_that_kept_the_floor_and_forgot_most():
    # GradDiff on the GPT-2 demo: the first epochs keep retain likelihood, then the
    # model is damaged; only the last point gets a verdict probe, far below the floor.
    points = [
        light(8, retain=1.0, auc=1.0),
        light(16, retain=0.99, auc=0.98),
        light(24, retain=0.96, auc=0.70),  # in the floor, closest to 0.5
        light(32, retain=0.90, auc=0.52),  # closer still, but below the floor
        light(40, retain=0.6, auc=0.1),
        point(48, knowledge=0.02, membership=0.0, utility=0.62),
    ]
    assert select_point(points, utility_floor=FLOOR).step == 24


def test_a_measured_near_miss_outranks_light_points():
    points = [
        light(8, retain=1.0, auc=0.99),
        point(16, knowledge=0.3, membership=0.2, utility=FLOOR - 0.05),
    ]
    assert select_point(points, utility_floor=FLOOR).step == 16


def test_without_a_light_point_at_the_floor_the_least_damaged_estimate_is_published():
    points = [
        light(8, retain=0.9, auc=0.8),
        light(16, retain=0.7, auc=0.5),
        point(24, knowledge=0.3, membership=0.1, utility=0.6),
    ]
    assert select_point(points, utility_floor=FLOOR).step == 8
    # a collapsed model's utility of exactly 0 is a figure, not a missing one
    collapsed = [point(8, knowledge=0.3, utility=0.0), light(16, retain=0.5, auc=0.5)]
    assert select_point(collapsed, utility_floor=FLOOR).step == 16
    assert select_point(collapsed[:1], utility_floor=FLOOR).step == 8


@pytest.mark.parametrize("floor", [0.5, 0.95])
def test_utility_exactly_at_the_floor_counts_as_kept(floor):
    points = [point(10, knowledge=0.2, utility=floor), point(20, knowledge=0.1, utility=1.0)]
    assert select_point(points, utility_floor=floor).step == 10


def test_a_met_point_stops_the_run_only_once_the_next_confirms_it():
    points = [
        point(10, knowledge=0.01, membership=0.9, utility=1.0),
        point(20, status="forgotten", knowledge=0.3, membership=0.4, utility=0.97),
        point(30, knowledge=0.1, membership=0.35, utility=0.97),  # the next one fails
        point(40, status="forgotten", knowledge=0.5, membership=0.3, utility=0.98),
        point(50, status="forgotten", knowledge=0.4, membership=0.3, utility=0.99),
    ]
    for end in (2, 3, 4):
        assert (
            should_stop(points[:end], utility_floor=FLOOR, stop_when_met=True, confirm_points=2)
            is None
        )
    reason = should_stop(points, utility_floor=FLOOR, stop_when_met=True, confirm_points=2)
    assert reason == "target met and confirmed at 2 points in a row"
    # the published point is the one that confirmed, not the lone pass at step 20
    assert select_point(points, utility_floor=FLOOR, confirm_points=2).step == 50
    # with one point trusted, the first pass is
    assert select_point(points, utility_floor=FLOOR, confirm_points=1).step == 20
    # three in a row never happened: the best forgetting at the floor (knowledge 0.5)
    assert select_point(points, utility_floor=FLOOR, confirm_points=3).step == 40


def test_met_streak_counts_met_points_in_a_row():
    from core.training.target import met_streak

    statuses = ["forgotten", "not_forgotten", "forgotten", "forgotten", "forgotten"]
    points = [point(10 * i, status=s) for i, s in enumerate(statuses, 1)]
    assert [met_streak(points, i) for i in range(len(points))] == [1, 0, 1, 2, 3]
    assert met_streak(points) == 3 and met_streak([]) == 0


def test_the_published_points_confirmation_counts_its_streak_from_stored_points():
    from dataclasses import asdict

    from core.training.target import confirmation

    statuses = ["not_forgotten", "forgotten", "forgotten"]
    stored = [asdict(point(10 * i, status=s)) for i, s in enumerate(statuses, 1)]
    assert confirmation(stored, 30, 2).passed and confirmation(stored, 30, 2).value == 2
    lone = confirmation(stored, 20, 2)
    assert lone.passed is False and lone.value == 1
    assert confirmation(stored, 99, 2).value == 0  # a step that was no point
    assert confirmation(stored, 30, 1) is None and confirmation([], 30, 2) is None
