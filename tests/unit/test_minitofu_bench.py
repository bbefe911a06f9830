"""bench/minitofu.py on the tiny demo: the JSON has the documented shape, the summary
over seeds keeps a forget quality of 0.0 (it is a result, not a gap), and the guard row
is the guard evaluation's figures over seeds, held to the issue's goal."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from tests.fixtures.bench import bench_module


@pytest.fixture(scope="module")
def minitofu():
    with bench_module("minitofu.py") as module:
        yield module


def run_on_tiny(minitofu, tiny_demo, tmp_path, argv: list[str]) -> dict:
    """``bench/minitofu.py argv`` on a copy of the tiny demo's build 0; its --out JSON."""
    cache = tmp_path / "cache"
    shutil.copytree(tiny_demo.root, cache / "demo-tiny")
    out = tmp_path / "out.json"
    assert minitofu.main([*argv, "--cache", str(cache), "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_log10_forget_quality_counts_a_zero_p_value(minitofu):
    rows = [
        {"seed": s, "forget_quality": fq, "model_utility": 0.5, "hyperparameters": {}}
        for s, fq in ((0, 0.1), (1, 0.0))
    ]
    summary = minitofu.summarize(rows, original_mu=0.5)
    # mean(log10 0.1, log10 1e-300) = (-1 - 300) / 2
    assert summary["log10_forget_quality"] == pytest.approx(-150.5)
    assert summary["model_utility_ratio"] == pytest.approx(1.0)


def guard_evaluation(*, guarded, oracle, retain, overhead, verdict="forgotten"):
    """The shape of ``core.evaluation.guard.evaluate_guard``'s result, by hand."""
    return {
        "forget_rouge_l": {"unguarded": 0.9, "guarded": guarded, "oracle": oracle},
        "forget_knowmem": {"unguarded": 0.8, "guarded": guarded / 2, "oracle": oracle / 2},
        "retain_rouge_l": {"unguarded": 0.8, "guarded": retain, "guarded_vs_unguarded": 1.0},
        "paraphrase_attack_rouge_l": 0.2,
        "classifier": {
            "holdout": [{"precision": 1.0, "recall": 0.75}],
            "paraphrased_forget_flag_rate": 0.9,
            "retain_flag_rate": 0.0,
        },
        "seconds_per_token": {"unguarded": 0.01, "guarded": 0.01 * overhead, "overhead": overhead},
        "verdict": {"status": verdict, "reason": "..."},
    }


def test_near_misses_are_the_forgetting_checks_passing_where_the_oracle_disagrees(minitofu):
    def verdict(*passed):
        names = ("knowledge", "membership", "relearning")
        return {"checks": [{"name": n, "passed": p} for n, p in zip(names, passed)]}

    # relearning is not a forgetting check; no forgetting check ran: None
    assert minitofu._forgetting_passes(verdict(True, True, False)) is True
    assert minitofu._forgetting_passes(verdict(True, False, True)) is False
    assert minitofu._forgetting_passes({"checks": []}) is None

    def row(quality, passes, met=False):
        return {
            "forget_quality": quality,
            "forgetting_passes": passes,
            "target_met": met,
            "model_utility": 0.5,
            "model_utility_ratio": 1.0,
            "seed": 1,
            "hyperparameters": {},
        }

    # RMU's build 1 of stop 39: forgetting passed at 0.035 (near), at 0.3 it is right
    rows = [row(0.035, True), row(0.3, True), row(0.01, False), row(0.02, None)]
    summary = minitofu.summarize_target(rows, 0.5)
    assert (summary["forgetting_false_runs"], summary["false_forgotten_runs"]) == (1, 0)
    # 0.3 is the only run the KS test cannot tell from the oracle at 5%
    assert summary["forget_quality_counts"] == {
        "at_least_0.9": 0,
        "below_0.5": 4,
        "at_least_0.05": 1,
    }


def test_guard_row_averages_seeds_and_holds_the_means_to_the_goal(minitofu):
    runs = [
        {**minitofu.guard_row(evaluation), "seed": seed, "hyperparameters": {"seed": seed}}
        for seed, evaluation in (
            (1, guard_evaluation(guarded=0.3, oracle=0.6, retain=0.8, overhead=1.2)),
            (2, guard_evaluation(guarded=0.5, oracle=0.6, retain=0.76, overhead=1.4)),
        )
    ]
    assert runs[0]["knowmem"] == pytest.approx(15.0)  # the evaluation's x100 scale
    assert runs[0]["tokens_per_second_unguarded"] == pytest.approx(100.0)
    row = minitofu.summarize_guard(runs)
    assert row["forget_rouge"] == pytest.approx(0.4)
    assert row["retain_rouge_ratio"] == pytest.approx(0.975)  # mean of 1.0 and 0.95
    assert row["latency_ratio"] == pytest.approx(1.3)
    assert (row["classifier_precision"], row["classifier_recall"]) == (1.0, 0.75)
    assert row["forgotten_runs"] == 2 and row["seeds"] == [1, 2]
    assert row["goal"]["met"]

    too_slow = minitofu.guard_row(
        guard_evaluation(guarded=0.3, oracle=0.6, retain=0.8, overhead=1.6)
    )
    assert minitofu.guard_goal(too_slow) == {
        "forget_at_or_below_oracle": True,
        "retain_ratio_at_floor": True,
        "latency_at_ceiling": False,
        "met": False,
    }
    leaky = minitofu.guard_row(guard_evaluation(guarded=0.7, oracle=0.6, retain=0.7, overhead=1.0))
    goal = minitofu.guard_goal(leaky)
    assert not goal["forget_at_or_below_oracle"] and not goal["retain_ratio_at_floor"]


def test_the_guard_row_has_no_target_job(minitofu, capsys):
    with pytest.raises(SystemExit):
        minitofu.main(["--target", "--methods", "simnpo,guard"])
    assert "GUARD trains nothing" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_run_writes_every_model_with_the_headline_metrics(minitofu, tiny_demo, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(tiny_demo.root, cache / "demo-tiny")  # reuse the session's build
    out = tmp_path / "results.json"
    argv = ["--preset", "tiny", "--seeds", "0", "--methods", "simnpo,ga,guard"]
    assert minitofu.main([*argv, "--cache", str(cache), "--out", str(out)]) == 0
    methods = json.loads(out.read_text())["methods"]
    assert set(methods) == {"original", "retrain", "simnpo", "ga", "guard"}
    guard = methods.pop("guard")
    for row in methods.values():
        for key in ("forget_quality", "model_utility", "forget_probability", "privleak"):
            assert key in row
        for key in ("forget_rouge", "retain_rouge", "retain_rouge_ratio", "knowmem"):
            assert row[key] is not None
        assert math.isfinite(row["retain_probability"])
    assert methods["retrain"]["privleak"] == pytest.approx(0.0)
    assert methods["simnpo"]["forget_probability"] < methods["original"]["forget_probability"]
    assert "forget_quality" not in guard  # it trains nothing: no likelihood figures
    for key in minitofu.GUARD_KEYS:
        assert key in guard
    assert guard["forget_rouge"] < guard["forget_rouge_unguarded"]
    assert guard["seeds"] == [0] and guard["verdicts"][0] in {"forgotten", "not_forgotten"}
    assert set(guard["goal"]) == {
        "forget_at_or_below_oracle",
        "retain_ratio_at_floor",
        "latency_at_ceiling",
        "met",
    }


@pytest.mark.slow
def test_target_mode_keeps_the_out_shape_and_can_give_jobs_a_smaller_holdout(
    minitofu, tiny_demo, tmp_path
):
    cache = tmp_path / "cache"
    shutil.copytree(tiny_demo.root, cache / "demo-tiny")
    out = tmp_path / "target.json"
    argv = ["--target", "--preset", "tiny", "--seeds", "0", "--methods", "graddiff"]
    argv += ["--holdout-subjects", "2", "--target-settings", '{"max_epochs": 4}']
    argv += ["--keep-models", str(tmp_path / "kept")]
    assert minitofu.main([*argv, "--cache", str(cache), "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["mode"] == "target"
    methods = results["methods"]
    assert methods["original"]["model_utility"] > 0
    row = methods["graddiff"]
    for key in ("forget_quality", "model_utility", "model_utility_ratio"):
        assert isinstance(row[key], float)
    assert isinstance(row["target_met"], bool) and row["target_met_runs"] in (0, 1)
    assert row["false_forgotten_runs"] in (0, 1)
    # each run says whether the oracle itself passes the verdict's forgetting checks
    (run,) = row["runs"]
    assert isinstance(run["oracle_passes"], bool) and 0 <= run["oracle_knowledge_p"] <= 1
    assert row["oracle_fails_runs"] == (0 if run["oracle_passes"] else 1)
    # and whether the forgetting checks alone passed, counted where the oracle disagrees
    assert run["forgetting_passes"] in (True, False, None)
    near = bool(run["forgetting_passes"]) and run["forget_quality"] < 0.05
    assert row["forgetting_false_runs"] == int(near)
    # the jobs got the first two of the tiny demo's four holdout authors
    holdout = (cache / "holdout-tiny-2-subjects.jsonl").read_text().splitlines()
    subjects = {json.loads(line)["subject"] for line in holdout}
    assert len(subjects) == 2 and len(holdout) == 2 * 8
    # --keep-models: the published model outlives the run's folder, from the step the row
    # names
    kept = json.loads((tmp_path / "kept" / "graddiff-build0-seed0" / "manifest.json").read_text())
    assert kept["evaluation_point"]["step"] == run["selected_step"]
    assert kept["evaluation_point"]["role"] == "published"


@pytest.mark.slow
def test_then_continues_each_target_job_with_changed_fields(minitofu, tiny_demo, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(tiny_demo.root, cache / "demo-tiny")
    out = tmp_path / "then.json"
    argv = ["--target", "--preset", "tiny", "--seeds", "0", "--methods", "simnpo"]
    argv += ["--target-settings", '{"max_epochs": 2}']
    then = {"hyperparameters": {"sam_rho": 0.1, "learning_rate": 1e-4}, "target": {"max_epochs": 4}}
    argv += ["--then", json.dumps(then)]
    assert minitofu.main([*argv, "--cache", str(cache), "--out", str(out)]) == 0
    (row,) = json.loads((cache / "minitofu-runs-tiny.json").read_text()).values()
    # the second job went on from the first one's last point, under its own fields
    assert row["steps"] == 2 * row["first"]["steps"]
    assert row["hyperparameters"]["sam_rho"] == 0.1
    assert row["hyperparameters"]["learning_rate"] == 1e-4 != row["first"]["learning_rate"]
    assert row["hyperparameters"]["epochs"] == 4
    steps = [point["step"] for point in row["trajectory"]]
    assert steps[: len(row["first"]["trajectory"])] == [
        point["step"] for point in row["first"]["trajectory"]
    ]
    assert isinstance(row["first"]["target_met"], bool)


@pytest.mark.slow
def test_builds_summarize_each_method_over_every_build_and_seed(minitofu, tiny_demo, tmp_path):
    argv = ["--target", "--preset", "tiny", "--seeds", "0", "--methods", "graddiff"]
    argv += ["--builds", "0,1", "--target-settings", '{"max_epochs": 2}']
    results = run_on_tiny(minitofu, tiny_demo, tmp_path, argv)  # build 1 is made here
    first, second = results["builds"]
    assert (first["seed"], second["seed"]) == (0, 1)
    assert first["target_sha256"] != second["target_sha256"]  # other authors, other model
    original = results["methods"]["original"]
    per_build = [row["model_utility"] for row in original["per_build"]]
    assert original["model_utility"] == pytest.approx(sum(per_build) / 2)
    row = results["methods"]["graddiff"]
    assert [run["build_seed"] for run in row["runs"]] == [0, 1]
    ratios = [run["model_utility_ratio"] for run in row["runs"]]
    assert row["model_utility_ratio"] == pytest.approx(sum(ratios) / 2)
    assert row["forget_quality"] == pytest.approx(
        sum(run["forget_quality"] for run in row["runs"]) / 2
    )


def test_several_builds_need_target_mode(minitofu, tmp_path):
    with pytest.raises(SystemExit):
        minitofu.main(["--builds", "0,1", "--cache", str(tmp_path), "--preset", "tiny"])


def test_retrains_summary_applies_the_goal_to_perfect_forgetting(minitofu):
    def row(quality, utility, forgotten, passes):
        return {
            "forget_quality": quality,
            "model_utility_ratio": utility,
            "target_met": forgotten,
            "forgetting_passes": passes,
        }

    rows = [row(0.95, 1.1, True, True), row(0.3, 0.9, False, True), row(None, 1.0, False, False)]
    summary = minitofu.summarize_retrains(rows)
    # a missing p-value counts as 0, as in the methods' rows: (0.95 + 0.3 + 0) / 3
    assert summary["forget_quality"] == pytest.approx(1.25 / 3)
    assert summary["forget_quality_median"] == pytest.approx(0.3)
    assert summary["forget_quality_min"] == 0.0
    assert summary["forget_quality_counts"] == {
        "at_least_0.9": 1,
        "below_0.5": 2,
        "at_least_0.05": 2,
    }
    assert (summary["model_utility_ratio_min"], summary["model_utility_ratio_max"]) == (0.9, 1.1)
    assert summary["model_utility_ratio"] == pytest.approx(1.0)
    assert summary["target_met_runs"] == 1
    assert summary["forgetting_passes_runs"] == 2


def test_retrains_need_target_mode(minitofu, tmp_path):
    with pytest.raises(SystemExit):
        minitofu.main(["--retrains", "1", "--cache", str(tmp_path), "--preset", "tiny"])


@pytest.mark.slow
def test_retrains_of_other_seeds_are_scored_against_the_oracle(minitofu, tiny_demo, tmp_path):
    argv = ["--target", "--preset", "tiny", "--methods", "graddiff", "--seeds", "0"]
    argv += ["--retrains", "1", "--target-settings", '{"max_epochs": 2}']
    results = run_on_tiny(minitofu, tiny_demo, tmp_path, argv)
    assert 0 <= results["methods"]["graddiff"]["retrain_parity"] <= 1
    (run,) = results["retrain_seeds"]["runs"]
    assert run["training_seed"] == 1001 and run["build_seed"] == 0
    # another training seed on the oracle's data: another model, scored like a job's
    assert run["model_utility"] != pytest.approx(results["methods"]["retrain"]["model_utility"])
    assert run["model_utility_ratio"] == pytest.approx(
        run["model_utility"] / results["methods"]["original"]["model_utility"]
    )
    assert 0 <= run["forget_quality"] <= 1 and 0 <= run["membership_auc"] <= 1
    assert run["target_met"] == (run["verdict"] == "forgotten")
    assert run["relearn_ratio"] > 0
    # kept beside the build's models, and taken from there the next time
    (kept,) = (tmp_path / "cache" / "demo-tiny" / "retrains").glob("*-seed1001")
    assert (kept / "config.json").exists()
    assert results["retrain_seeds"]["forget_quality"] == run["forget_quality"]
    # against the oracle alone (its only other retrain is itself, left out): the same p-value
    assert run["forget_quality_pooled"] == pytest.approx(run["forget_quality"])
    graddiff = results["methods"]["graddiff"]
    (job,) = graddiff["runs"]
    assert len(job["forget_truth_ratios"]) == len(run["forget_truth_ratios"]) > 0
    assert 0 <= job["forget_quality_pooled"] <= 1
    assert 0 <= job["knowledge_p"] <= 1 and 0 <= job["membership_auc"] <= 1
    assert set(graddiff["retrain_goal"]) == {
        "retrain_parity",
        "forget_quality_all_at_least_0.05",
        "model_utility",
        "target_met",
        "relearning",
        "met",
    }
    assert graddiff["issue_goal"]["met"] is False  # two epochs of a tiny model


def test_retrain_parity_compares_runs_with_retrains_of_their_own_build(minitofu):
    runs = [{"forget_quality": 0.5, "build_seed": 0}, {"forget_quality": 0.1, "build_seed": 1}]
    retrains = [
        {"forget_quality": 0.3, "build_seed": 0},
        {"forget_quality": 0.5, "build_seed": 0},
        {"forget_quality": 0.9, "build_seed": 1},
    ]
    # build 0: 0.5 beats 0.3 (1) and ties 0.5 (1/2); build 1: 0.1 loses to 0.9 (0)
    assert minitofu.retrain_parity(runs, retrains) == pytest.approx(1.5 / 3)
    # runs of a single build do not name it: they take the one given
    assert minitofu.retrain_parity([{"forget_quality": None}], retrains, 1) == 0.0
    assert minitofu.retrain_parity(runs, []) is None


def test_pooled_forget_quality_takes_the_oracle_and_the_other_retrains_of_the_build(minitofu):
    oracles = {0: [3.0], 1: [0.5]}
    retrains = [
        {"build_seed": 0, "training_seed": 1001, "forget_truth_ratios": [4.0, None, math.nan]},
        {"build_seed": 0, "training_seed": 1002, "forget_truth_ratios": [1.5]},
        {"build_seed": 1, "training_seed": 1001, "forget_truth_ratios": [5.0]},
    ]
    run = {"build_seed": 0, "forget_truth_ratios": [1.0, 2.0]}
    # reference [3, 4, 1.5] (build 1's retrain is another build's): ours {1, 2} against it,
    # D = 1 - 1/3 = 2/3 at 2. Exact two-sided p: of the C(5, 2) = 10 ways to put two of the
    # five values in ours, D >= 2/3 for ranks {1,2} {4,5} (D = 1), {1,3} {2,3} {3,4} {3,5}:
    # 6 of 10
    assert minitofu.pooled_forget_quality(run, oracles, retrains) == pytest.approx(0.6)
    # a retrain is left out of its own reference: {4} against [3, 1.5], D = 1; of the
    # three ranks ours can take, the lowest and the highest give D = 1: p = 2/3
    own = retrains[0]
    assert minitofu.pooled_forget_quality(own, oracles, retrains) == pytest.approx(2 / 3)
    assert minitofu.pooled_forget_quality({"build_seed": 0}, oracles, retrains) is None


def target_run(quality, utility, met, relearn, build=0):
    return {
        "forget_quality": quality,
        "model_utility_ratio": utility,
        "target_met": met,
        "relearn_unseen_vs_oracle": relearn,
        "build_seed": build,
    }


def test_issue_goal_checks_each_part_the_issue_states(minitofu):
    met = [target_run(0.95, 0.96, True, 1.2), target_run(0.9, 1.0, True, 1.5)]
    assert minitofu.issue_goal(met)["met"] is True
    # the mean 0.75 misses 0.9, one run below 0.5, one under the 0.95x floor
    goal = minitofu.issue_goal(
        [target_run(0.99, 0.94, True, 1.0), target_run(0.49, 1.0, True, 1.0)]
    )
    assert goal == {
        "forget_quality_mean": False,
        "forget_quality_min": False,
        "model_utility": False,
        "target_met": True,
        "relearning": True,
        "met": False,
    }
    # a run without the relearning figure does not meet it; a missing p-value counts 0
    goal = minitofu.issue_goal([target_run(None, 1.0, False, None)])
    assert not goal["relearning"] and not goal["target_met"] and not goal["forget_quality_min"]


def test_retrain_goal_holds_runs_to_what_retrains_of_their_build_do(minitofu):
    retrains = [
        {"build_seed": 0, "forget_quality": 0.3, "model_utility_ratio": 0.9, "target_met": True},
        {"build_seed": 0, "forget_quality": 0.7, "model_utility_ratio": 1.1, "target_met": False},
        {"build_seed": 1, "forget_quality": 0.8, "model_utility_ratio": 0.7, "target_met": True},
    ]
    # build 0, 0.5: beats 0.3, loses to 0.7 -> parity 1/2; utility 0.92 >= 0.9, the lowest
    # of build 0's retrains; met on 1 of 2 runs as the verdict is on 1 of build 0's 2
    runs = [target_run(0.5, 0.92, True, 1.0), target_run(0.5, 0.95, False, 1.4)]
    assert minitofu.retrain_goal(runs, retrains)["met"] is True
    # 0.04: indistinguishable from the oracle no more; 0.8x: under build 0's lowest (0.9)
    # though above build 1's; parity 1/4 (the first run's two pairs are losses)
    runs = [target_run(0.04, 0.8, False, 1.0), target_run(0.5, 0.95, False, 1.6)]
    assert minitofu.retrain_goal(runs, retrains) == {
        "retrain_parity": False,
        "forget_quality_all_at_least_0.05": False,
        "model_utility": False,
        "target_met": False,
        "relearning": False,
        "met": False,
    }
    # build 1's run is held to build 1's retrains only: 0.75x >= 0.7x, 0.8 ties 0.8
    assert minitofu.retrain_goal([target_run(0.8, 0.75, True, 1.0, build=1)], retrains)["met"]
    # retrains that all keep more than the original do not raise the floor above 0.95x
    better = [
        {"build_seed": 2, "forget_quality": 0.8, "model_utility_ratio": 1.2, "target_met": True}
    ]
    assert minitofu.retrain_goal([target_run(0.8, 0.95, True, 1.0, build=2)], better)["met"]
    assert not minitofu.retrain_goal([target_run(0.8, 0.94, True, 1.0, build=2)], better)["met"]
