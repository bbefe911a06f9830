"""Mini-TOFU: does Obliviate reproduce the SimNPO paper's findings on a model it can
train itself?

    python bench/minitofu.py --target --out results.json      # the default job, verified
    python bench/minitofu.py --target --builds 0,1,2 --out results.json  # on three asset builds
    python bench/minitofu.py --target --builds 0,1,2 --retrains 4 --out results.json  # beside retrains
    python bench/minitofu.py --out results.json               # settled defaults, seeds 1-3
    python bench/minitofu.py --sweep grid,kl,push --out sweep.json  # the sweeps behind them (seed 0)

``--target`` runs what a user gets from a job spec with no hyperparameters at all: the
whole job pipeline (``core.pipeline.run_job``), training until the verdict says
forgotten with utility at the floor (or the budget ends), then the full evaluation
against the oracle, the relearning attack on the unlearned model and on the oracle, and
the final verdict. Per method it reports the oracle's forget quality, the utility
ratio, ``target_met``, the steps to the published point and the relearning figure.
``--retrains N`` adds what perfect forgetting scores on the same builds: N retrains of
other training seeds (``bench/retrain_seeds.py``), and per method its ``retrain_parity``
(how often its forget quality reaches theirs; 0.5 is as good as retraining). Each
method's row holds ``issue_goal``, each part of issue 8's goal as the issue states it,
and with ``--retrains`` ``retrain_goal``, the same goal stated against what the retrains
of its builds do, and ``forget_quality_pooled``, forget quality against the build's
oracle and retrains together rather than one oracle; both are printed below the table.

Builds the demo assets (fictitious authors, ~1M-parameter target that memorized them,
retrain oracle without the forget10 authors), evaluates target and oracle once, then
unlearns forget10 with GA, GradDiff, NPO and SimNPO and evaluates each against the
oracle. Prints a table and writes
``{"methods": {"original": {...}, "retrain": {...}, "ga": {...}, ...}}``.

Methods are compared at a common utility floor (model utility >= 0.9x the original's),
not each at its own best: ``--sweep`` runs the same grid budget for every method and
reports, per method, the best forget quality among settings above the floor.

``--methods guard`` adds GUARD (generation-time unlearning, ``bench/guard.py``): it
trains nothing, so it has no forget quality or model utility; its row holds what it
changes, the generated answers (``core.evaluation.guard``, one guard per seed): forget
ROUGE-L and KnowMem guarded (and unguarded and the oracle's, measured the same way),
retain ROUGE-L and its ratio to the unguarded original's, the classifier's held-out
precision and recall, the paraphrased-question attack, tokens/s without and with the
guard, the latency ratio, the guard's verdict, and the goal (forget ROUGE-L at or below
the oracle's, retain >= 0.95x, latency <= 1.5x). A second table shows it beside every
other row's generation figures (ROUGE-L and KnowMem from the evaluation). The guard
row is not part of ``--target`` or ``--sweep``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import itertools
import json
import math
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.data.encoding import encode_record_set  # noqa: E402
from core.data.records import read_records  # noqa: E402
from core.demo import build_demo_assets  # noqa: E402
from core.evaluation import EvaluationSets, compare, evaluate_model, metrics  # noqa: E402
from core.methods import get_method  # noqa: E402
from core.models.loading import load_model  # noqa: E402
from core.spec import DEFAULT_PROMPT_TEMPLATE, EvaluationSpec  # noqa: E402
from core.training.loop import run_training  # noqa: E402

METHODS = ("ga", "graddiff", "npo", "simnpo")
#: rows beside them: FLAT with and without a retain set, LoKU in full, with LoRA and with
#: FILA-initialised LoRA (``--methods flat,flat-noretain,loku,loku+lora,loku+fila``)
EXTRA_ROWS = ("flat", "flat-noretain", "loku", "loku+lora", "loku+fila", "rmu")
#: row name -> (method, LoRA spec or None), for rows not named after their method
VARIANTS = {
    "flat-noretain": ("flat", None),
    "loku+lora": ("loku", {"r": 8, "alpha": 16}),
    "loku+fila": ("loku", {"r": 8, "alpha": 16, "init": "fila"}),
}
#: rows that train nothing: GUARD, measured on generations (``--methods guard``)
GENERATION_ROWS = ("guard",)
UTILITY_FLOOR = 0.9
MAX_LENGTH = 128

# Shared by every method: the optimizer budget is the same for all of them.
COMMON = {
    "batch_size": 8,
    "gradient_accumulation_steps": 1,
    "warmup_ratio": 0.1,
    "weight_decay": 0.01,
    "precision": "fp32",
    "max_length": MAX_LENGTH,
}

# Settled by `--sweep grid,kl,push` (docs/minitofu.md has the grids and every run): per
# method, the best forget quality among the settings whose model utility stays >= 0.9x
# the original's, on seed 0; reported on seeds 1, 2, 3, which took no part in choosing. GA is shown at a full budget instead (lr 1e-3, 10 epochs, as
# the others get at most), to show that it collapses; its best above the floor is in
# the docs.
DEFAULTS = {
    "ga": {"learning_rate": 1e-3, "epochs": 10},
    "graddiff": {"learning_rate": 1e-3, "epochs": 5, "retain_coeff": 5.0},
    "npo": {"learning_rate": 3e-4, "epochs": 10, "retain_coeff": 1.0, "beta": 0.1},
    "simnpo": {
        "learning_rate": 3e-4,
        "epochs": 10,
        "retain_coeff": 5.0,
        "beta": 1.0,
        "gamma": 3.0,
        "forget_coeff": 1.0,
    },
    # Settled by `--sweep flatloku` (seed 0, 8-9 settings each, the same selection rule:
    # best forget quality at model utility >= 0.9x the original's).
    "flat": {"learning_rate": 3e-4, "epochs": 10, "retain_loss": "nll", "retain_coeff": 1.0},
    "flat-noretain": {"learning_rate": 3e-4, "epochs": 3, "retain_loss": "none"},
    "loku": {"learning_rate": 1e-3, "epochs": 5, "retain_coeff": 1.0},
    "loku+lora": {"learning_rate": 3e-3, "epochs": 5, "retain_coeff": 1.0},
    "loku+fila": {"learning_rate": 1e-3, "epochs": 10, "retain_coeff": 1.0},
    # RMU's own defaults (stop 39: measured with a target, matched; not swept here)
    "rmu": {},
}

# The sweep gives every method the same budget, 36 settings: learning rate x epochs x
# retain weight x the method's own knob (beta); GA has neither retain term nor beta, so
# it gets a wider learning-rate and epoch range. SimNPO is swept at beta 1.0 and 2.5 (the
# paper's TOFU value); NPO at 0.1 (the paper's) and 0.5.
SWEEP_LR = [3e-4, 1e-3, 3e-3]
SWEEP_EPOCHS = [3, 5, 10]
SWEEP = {
    "ga": {"learning_rate": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2], "epochs": [1, 2, 3, 5, 10, 20]},
    "graddiff": {
        "learning_rate": SWEEP_LR,
        "epochs": SWEEP_EPOCHS,
        "retain_coeff": [1.0, 2.0, 5.0, 10.0],
    },
    "npo": {
        "learning_rate": SWEEP_LR,
        "epochs": SWEEP_EPOCHS,
        "retain_coeff": [1.0, 5.0],
        "beta": [0.1, 0.5],
    },
    "simnpo": {
        "learning_rate": SWEEP_LR,
        "epochs": SWEEP_EPOCHS,
        "retain_coeff": [1.0, 5.0],
        "beta": [1.0, 2.5],
        "forget_coeff": [1.0],
    },
}
# Round 2, the same 12 settings for every method with a retain term: the KL retain term
# (to the original model, on retain answers) in place of NLL. Round 1 showed utility, not
# forgetting, binding at the floor; NLL on retain answers keeps those answers but not the
# original's preferences between right and wrong values (the truth-ratio part of model
# utility), which KL to the original does keep. Each method keeps its round-1 knob.
SWEEP_KL_AXES = {
    "retain_loss": ["kl"],
    "learning_rate": SWEEP_LR,
    "epochs": [5, 10],
    "retain_coeff": [1.0, 5.0],
}
SWEEP_KL = {
    "graddiff": SWEEP_KL_AXES,
    "npo": {**SWEEP_KL_AXES, "beta": [0.1]},
    "simnpo": {**SWEEP_KL_AXES, "beta": [1.0], "forget_coeff": [1.0]},
}
# Round 3, 12 settings each for the two preference methods: the knob that decides how
# long each keeps pushing a sample down. SimNPO's weight sigma(gamma - beta * avgNLL)
# fades once a sample's per-token NLL passes gamma / beta; a margin gamma > 0 keeps it
# pushing. NPO's fades with beta * (NLL - NLL_ref); a smaller beta keeps it pushing.
SWEEP_PUSH_AXES = {"learning_rate": [3e-4, 1e-3], "epochs": [10], "retain_coeff": [1.0, 2.0, 5.0]}
SWEEP_PUSH = {
    "npo": {**SWEEP_PUSH_AXES, "beta": [0.05, 0.2]},
    "simnpo": {**SWEEP_PUSH_AXES, "beta": [1.0], "gamma": [1.0, 3.0], "forget_coeff": [1.0]},
}
# FLAT and LoKU (`--sweep flatloku --methods flat,flat-noretain,loku,loku+lora,loku+fila`):
# 8 settings per row (9 forget-only), a smaller budget than the others' 36 + 12 + 12.
# Forget-only FLAT has no retain weight, so it gets shorter runs and lower rates instead.
SWEEP_FLAT_LOKU_AXES = {
    "learning_rate": [3e-4, 1e-3],
    "epochs": [5, 10],
    "retain_coeff": [1.0, 5.0],
}
SWEEP_FLAT_LOKU = {
    "flat": {**SWEEP_FLAT_LOKU_AXES, "retain_loss": ["nll"]},
    "flat-noretain": {
        "learning_rate": [1e-4, 3e-4, 1e-3],
        "epochs": [1, 2, 3],
        "retain_loss": ["none"],
    },
    "loku": SWEEP_FLAT_LOKU_AXES,
    "loku+lora": {**SWEEP_FLAT_LOKU_AXES, "learning_rate": [1e-3, 3e-3]},
    "loku+fila": {**SWEEP_FLAT_LOKU_AXES, "learning_rate": [1e-3, 3e-3]},
}
SWEEPS = {"grid": SWEEP, "kl": SWEEP_KL, "push": SWEEP_PUSH, "flatloku": SWEEP_FLAT_LOKU}
#: floors of model utility (x the original's) at which sweeps are compared
FLOORS = (0.8, 0.85, 0.9, 0.95)
#: bump when a change to the engine, the evaluation or the verdict invalidates cached
#: runs (2: target.confirm_points; 3: two-sided membership by default)
RUNS_VERSION = 3

HEADLINE = (
    "forget_quality",
    "model_utility",
    "forget_probability",
    "retain_probability",
    "privleak",
    "forget_truth_ratio",
    "forget_rouge",
    "extraction_strength",
    "retain_rouge",
    # ROUGE-L F1 x 100 of greedy answers to the forget questions (MUSE KnowMem)
    "knowmem",
)


def evaluation_spec() -> EvaluationSpec:
    return EvaluationSpec(max_samples=400, max_new_tokens=32, batch_size=64)


class Bench:
    def __init__(self, preset: str, cache: Path, log, *, fresh: bool = False, build_seed: int = 0):
        self.log, self.preset, self.build_seed = log, preset, build_seed
        #: target jobs get the first N holdout subjects only (``limit_holdout``)
        self.holdout_subjects: int | None = None
        # build 0 keeps the folders it had before builds were a choice
        self.suffix = suffix = f"-build{build_seed}" if build_seed else ""
        self.cache_file = cache / f"minitofu-runs-{preset}{suffix}.json"
        if fresh:
            self.cache_file.unlink(missing_ok=True)
        self.cache = json.loads(self.cache_file.read_text()) if self.cache_file.exists() else {}
        started = time.monotonic()
        self.assets = build_demo_assets(cache / f"demo-{preset}{suffix}", preset, seed=build_seed)
        self.log(f"demo assets ready in {time.monotonic() - started:.0f}s: {self.assets.root}")
        data = self.assets.data
        self.sets = EvaluationSets(
            forget=read_records(data["forget10"]),
            retain=read_records(data["retain90"]),
            holdout=read_records(data["holdout"]),
            utility={"world_facts": read_records(data["world_facts"])},
        )
        self.spec = evaluation_spec()
        _, self.tokenizer = load_model(str(self.assets.target))

        def encode(records):
            return encode_record_set(
                self.tokenizer, records, max_length=MAX_LENGTH, template=DEFAULT_PROMPT_TEMPLATE
            )

        self.forget = encode(self.sets.forget)
        self.retain = encode(self.sets.retain)
        self.original = self.evaluate(
            load_model(str(self.assets.target), dtype="fp32")[0], "original"
        )
        self.oracle = self.evaluate(
            load_model(str(self.assets.retrain), dtype="fp32")[0], "retrain"
        )

    def evaluate(self, model, label: str):
        result = evaluate_model(
            model,
            self.tokenizer,
            self.sets,
            self.spec,
            template=DEFAULT_PROMPT_TEMPLATE,
            max_length=MAX_LENGTH,
        )
        result.label = label
        self.log(f"evaluated {label} in {result.seconds:.1f}s")
        return result

    def limit_holdout(self, subjects: int, folder: Path) -> None:
        """Target jobs get only the first ``subjects`` subjects of the holdout set (a file
        beside the preset's data; the figures against the oracle are unchanged)."""
        source = self.assets.data["holdout"]
        rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
        names: list[str] = []
        for row in rows:
            if row["subject"] not in names:
                names.append(row["subject"])
        kept = set(names[:subjects])
        path = folder / f"holdout-{self.preset}{self.suffix}-{subjects}-subjects.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["subject"] in kept))
        self.assets.data = {**self.assets.data, "holdout": path}
        self.holdout_subjects = subjects
        self.log(f"holdout: the first {subjects} of {len(names)} subjects ({path})")

    def reference_row(self, result) -> dict:
        comparison = compare(self.original, result, self.oracle)
        return {key: comparison.get(key) for key in HEADLINE}

    def run(self, method: str, overrides: dict, seed: int, *, complete: bool = False) -> dict:
        """One unlearning run and its evaluation; cached by configuration, since the
        runs are deterministic and a sweep is long. ``method`` may name a row of
        ``VARIANTS``. ``complete``: run again a cached row that lacks a headline metric
        (cached before it was added); sweeps, which rank by forget quality and utility
        only, take such rows as they are."""
        name = [method] if method not in VARIANTS else [method, VARIANTS[method]]
        key = json.dumps(
            [RUNS_VERSION, self.preset, *name, seed, {**COMMON, **overrides}], sort_keys=True
        )
        cached = self.cache.get(key)
        if cached is not None and (not complete or set(HEADLINE) <= set(cached)):
            return dict(cached)
        row = self._run(method, overrides, seed)
        self._save(key, row)
        return dict(row)

    def run_guard(self, seed: int) -> dict:
        """A guard of forget10 on the target (``seed``: its classifier's), evaluated on
        generations against the oracle (``bench/guard.py``); its row, cached like runs."""
        hyperparameters = {"seed": seed}
        key = json.dumps([RUNS_VERSION, self.preset, "guard", seed, hyperparameters])
        if key in self.cache:
            return dict(self.cache[key])
        started = time.monotonic()
        manifest, evaluation = _bench_module("guard").evaluate_demo_guard(
            self.assets, hyperparameters
        )
        row = guard_row(evaluation)
        row.update(
            seed=seed,
            spans=manifest["spans"],
            seconds=round(time.monotonic() - started, 1),
            hyperparameters=manifest["hyperparameters"],
        )
        self.log(
            f"guard seed {seed}: {row['verdict']}, forget ROUGE-L {_num(row['forget_rouge'])} "
            f"(oracle {_num(row['forget_rouge_oracle'])}), retain ratio "
            f"{_num(row['retain_rouge_ratio'])}, latency x{_num(row['latency_ratio'])}"
        )
        self._save(key, row)
        return dict(row)

    def _save(self, key: str, row: dict) -> None:
        """Merge into the cache file under a lock: sweeps run in parallel processes."""
        import fcntl

        with open(self.cache_file.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.cache_file.exists():
                self.cache.update(json.loads(self.cache_file.read_text()))
            self.cache[key] = row
            tmp = self.cache_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.cache))
            tmp.replace(self.cache_file)

    def _run(self, row: str, overrides: dict, seed: int) -> dict:
        from core.spec import LoraSpec

        method, lora = VARIANTS.get(row, (row, None))
        model, _ = load_model(str(self.assets.target), dtype="fp32")
        hparams = get_method(method).parse_hyperparameters({**COMMON, **overrides})
        started = time.monotonic()
        result = run_training(
            model,
            self.tokenizer,
            self.forget,
            self.retain if hparams.retain_loss != "none" else None,
            get_method(method),
            hparams,
            seed=seed,
            lora=LoraSpec(**lora) if lora else None,
        )
        if lora:
            result.model = result.model.merge_and_unload()
        train_s = time.monotonic() - started
        after = self.evaluate(result.model, f"{row} seed {seed}")
        row = self.reference_row(after)
        row.update(
            seed=seed,
            steps=result.steps,
            train_seconds=round(train_s, 1),
            hyperparameters={**COMMON, **overrides},
        )
        return row


def _bench_module(name: str):
    """``bench/<name>.py``, imported by file: benchmarks are scripts, not a package."""
    spec = importlib.util.spec_from_file_location(
        f"bench_{name}", Path(__file__).with_name(f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: the guard row's per-seed figures (``guard_row``), averaged over seeds
GUARD_KEYS = (
    "forget_rouge",
    "forget_rouge_unguarded",
    "forget_rouge_oracle",
    "knowmem",
    "knowmem_unguarded",
    "knowmem_oracle",
    "retain_rouge",
    "retain_rouge_unguarded",
    "retain_rouge_ratio",
    "paraphrase_rouge",
    "classifier_precision",
    "classifier_recall",
    "paraphrased_forget_flag_rate",
    "retain_flag_rate",
    "tokens_per_second_unguarded",
    "tokens_per_second_guarded",
    "latency_ratio",
)
#: the goal the guard row is held to (issue 12, as bench/guard.py states it)
GUARD_RETAIN_FLOOR = 0.95
GUARD_LATENCY_CEILING = 1.5


def guard_row(evaluation: dict) -> dict:
    """One guard's figures from its evaluation (``core.evaluation.guard.evaluate_guard``).
    KnowMem on the evaluation's scale for the other rows (ROUGE-L F1 x 100)."""
    forget, knowmem = evaluation["forget_rouge_l"], evaluation["forget_knowmem"]
    retain = evaluation["retain_rouge_l"]
    speed = evaluation["seconds_per_token"]
    holdout = evaluation["classifier"]["holdout"][0] or {}

    def percent(value):
        return None if value is None else 100.0 * value

    return {
        "forget_rouge": forget["guarded"],
        "forget_rouge_unguarded": forget["unguarded"],
        "forget_rouge_oracle": forget.get("oracle"),
        "knowmem": percent(knowmem["guarded"]),
        "knowmem_unguarded": percent(knowmem["unguarded"]),
        "knowmem_oracle": percent(knowmem.get("oracle")),
        "retain_rouge": retain["guarded"],
        "retain_rouge_unguarded": retain["unguarded"],
        "retain_rouge_ratio": (
            retain["guarded"] / retain["unguarded"] if retain["unguarded"] else None
        ),
        "paraphrase_rouge": evaluation["paraphrase_attack_rouge_l"],
        "classifier_precision": holdout.get("precision"),
        "classifier_recall": holdout.get("recall"),
        "paraphrased_forget_flag_rate": evaluation["classifier"]["paraphrased_forget_flag_rate"],
        "retain_flag_rate": evaluation["classifier"]["retain_flag_rate"],
        "tokens_per_second_unguarded": 1.0 / speed["unguarded"],
        "tokens_per_second_guarded": 1.0 / speed["guarded"],
        "latency_ratio": speed["overhead"],
        "verdict": evaluation["verdict"]["status"],
        "verdict_reason": evaluation["verdict"]["reason"],
    }


def summarize_guard(rows: list[dict]) -> dict:
    """Mean (and spread) over seeds of the guard's figures, its verdicts, and the goal
    held against the means."""
    out = {}
    for key in GUARD_KEYS:
        values = [r[key] for r in rows if r.get(key) is not None]
        out[key] = statistics.fmean(values) if values else None
        if len(values) > 1:
            out[f"{key}_std"] = statistics.stdev(values)
    out["verdicts"] = [r["verdict"] for r in rows]
    out["forgotten_runs"] = sum(r["verdict"] == "forgotten" for r in rows)
    out["goal"] = guard_goal(out)
    out["seeds"] = [r["seed"] for r in rows]
    out["runs"] = rows
    out["hyperparameters"] = {k: v for k, v in rows[0]["hyperparameters"].items() if k != "seed"}
    return out


def guard_goal(row: dict) -> dict:
    """The issue's goal on a guard row: forget ROUGE-L at or below the oracle's (measured
    on the same generations), retain ROUGE-L >= 0.95x the original's, latency <= 1.5x."""
    checks = {
        "forget_at_or_below_oracle": _at_most(
            row.get("forget_rouge"), row.get("forget_rouge_oracle")
        ),
        "retain_ratio_at_floor": _at_most(GUARD_RETAIN_FLOOR, row.get("retain_rouge_ratio")),
        "latency_at_ceiling": _at_most(row.get("latency_ratio"), GUARD_LATENCY_CEILING),
    }
    return {**checks, "met": all(checks.values())}


def _at_most(value, ceiling) -> bool:
    return value is not None and ceiling is not None and value <= ceiling + 1e-9


def summarize(rows: list[dict], original_mu: float) -> dict:
    """Mean over seeds; forget quality as the mean of log10 p-values (REFERENCES.md:
    p-values move by orders of magnitude across seeds)."""
    out = {}
    for key in HEADLINE:
        values = [r[key] for r in rows if r.get(key) is not None]
        if not values:
            out[key] = None
            continue
        out[key] = statistics.fmean(values)
        if len(values) > 1:
            out[f"{key}_std"] = statistics.stdev(values)
    # 0.0 is a result (a p-value below float range), not a missing one: clamp, don't drop.
    fq = [r["forget_quality"] for r in rows if r.get("forget_quality") is not None]
    out["log10_forget_quality"] = (
        statistics.fmean(math.log10(max(v, 1e-300)) for v in fq) if fq else None
    )
    out["model_utility_ratio"] = (
        out["model_utility"] / original_mu if out.get("model_utility") is not None else None
    )
    out["seeds"] = [r["seed"] for r in rows]
    out["runs"] = rows
    out["hyperparameters"] = rows[0]["hyperparameters"]
    return out


def _num(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def print_table(methods: dict, log) -> None:
    header = f"{'model':<14}{'FQ':>10}{'log10 FQ':>10}{'MU':>8}{'MU/orig':>9}{'P(forget)':>11}{'P(retain)':>11}{'PrivLeak':>10}"
    log(header)
    log("-" * len(header))

    def fmt(row, key, width, spec=".3f"):
        value = row.get(key)
        return f"{value:>{width}{spec}}" if isinstance(value, (int, float)) else f"{'-':>{width}}"

    for name, row in methods.items():
        log(
            f"{name:<14}{fmt(row, 'forget_quality', 10, '.2e')}{fmt(row, 'log10_forget_quality', 10, '.2f')}"
            f"{fmt(row, 'model_utility', 8)}{fmt(row, 'model_utility_ratio', 9)}"
            f"{fmt(row, 'forget_probability', 11)}{fmt(row, 'retain_probability', 11)}"
            f"{fmt(row, 'privleak', 10, '.1f')}"
        )


def print_generation_table(methods: dict, log) -> None:
    """What each row's greedy answers say: ROUGE-L recall on forget and retain questions,
    KnowMem (ROUGE-L F1 x 100) on forget questions; for the guard also the paraphrased
    questions, the classifier and the cost of guarded decoding."""
    header = (
        f"{'model':<14}{'forget R-L':>11}{'KnowMem':>9}{'retain R-L':>11}{'ret/orig':>9}"
        f"{'para R-L':>9}{'prec':>6}{'recall':>7}{'tok/s':>8}{'guarded':>8}{'latency':>8}"
        f"  verdict"
    )
    log(header)
    log("-" * len(header))
    for name, row in methods.items():
        verdict = (
            f"{row['forgotten_runs']}/{len(row['seeds'])} forgotten" if "verdicts" in row else ""
        )
        cells = [
            (row.get("forget_rouge"), 11, ".3f"),
            (row.get("knowmem"), 9, ".1f"),
            (row.get("retain_rouge"), 11, ".3f"),
            (row.get("retain_rouge_ratio"), 9, ".3f"),
            (row.get("paraphrase_rouge"), 9, ".3f"),
            (row.get("classifier_precision"), 6, ".2f"),
            (row.get("classifier_recall"), 7, ".2f"),
            (row.get("tokens_per_second_unguarded"), 8, ".0f"),
            (row.get("tokens_per_second_guarded"), 8, ".0f"),
            (row.get("latency_ratio"), 8, ".2f"),
        ]
        text = "".join(
            f"{value:>{width}{spec}}" if isinstance(value, (int, float)) else f"{'-':>{width}}"
            for value, width, spec in cells
        )
        log(f"{name:<14}{text}  {verdict}".rstrip())
    for name in GENERATION_ROWS:
        row = methods.get(name)
        if row is None:
            continue
        goal = row["goal"]
        log(
            f"{name}, on its own generations: forget ROUGE-L unguarded "
            f"{_num(row['forget_rouge_unguarded'])}, oracle {_num(row['forget_rouge_oracle'])}; "
            f"KnowMem unguarded {_num(row['knowmem_unguarded'])}, oracle "
            f"{_num(row['knowmem_oracle'])}; goal (forget <= oracle, retain >= "
            f"{GUARD_RETAIN_FLOOR}x, latency <= {GUARD_LATENCY_CEILING}x) "
            f"{'met' if goal['met'] else 'not met'}: "
            + ", ".join(f"{check} {ok}" for check, ok in goal.items() if check != "met")
        )


def run_defaults(bench: Bench, methods, seeds, log) -> dict:
    original = bench.reference_row(bench.original)
    retrain = bench.reference_row(bench.oracle)
    original_mu = original["model_utility"]
    results = {
        "original": {**original, "model_utility_ratio": 1.0},
        "retrain": {**retrain, "model_utility_ratio": retrain["model_utility"] / original_mu},
    }
    for method in methods:
        if method in GENERATION_ROWS:
            results[method] = summarize_guard([bench.run_guard(seed) for seed in seeds])
            continue
        rows = [bench.run(method, DEFAULTS[method], seed, complete=True) for seed in seeds]
        results[method] = summarize(rows, original_mu)
        log(
            f"{method}: FQ {_num(results[method]['forget_quality'])}, "
            f"MU ratio {_num(results[method]['model_utility_ratio'])}"
        )
    original_retain = original.get("retain_rouge")
    for name, row in results.items():
        if name not in GENERATION_ROWS:
            row["retain_rouge_ratio"] = (
                row["retain_rouge"] / original_retain
                if original_retain and row.get("retain_rouge") is not None
                else None
            )
    return results


def run_sweep(bench: Bench, methods, seed: int, log, grids: list[dict]) -> dict:
    """Every setting of every grid in ``grids``, per method; the best forget quality at
    each utility floor over all of them (ties: the higher utility)."""
    original_mu = bench.reference_row(bench.original)["model_utility"]
    grid_results = {}
    for method in methods:
        settings = [
            dict(zip(grid[method], values))
            for grid in grids
            if method in grid
            for values in itertools.product(*grid[method].values())
        ]
        rows = []
        for overrides in settings:
            row = bench.run(method, overrides, seed)
            row["model_utility_ratio"] = (
                row["model_utility"] / original_mu if row["model_utility"] is not None else None
            )
            rows.append(row)
            log(
                f"{method} {overrides}: FQ {_num(row['forget_quality'])} "
                f"MU ratio {_num(row['model_utility_ratio'])}"
            )
        grid_results[method] = {
            "runs": rows,
            "budget": len(rows),
            "best_at_floor": {str(floor): best_at_floor(rows, floor) for floor in FLOORS},
        }
        for floor in FLOORS:
            best = grid_results[method]["best_at_floor"][str(floor)]
            if best is not None:
                log(
                    f"{method} best at MU >= {floor}x: FQ {_num(best['forget_quality'])} "
                    f"(MU {best['model_utility_ratio']:.2f}x) with {best['hyperparameters']}"
                )
    return grid_results


def best_at_floor(rows: list[dict], floor: float) -> dict | None:
    eligible = [r for r in rows if (r.get("model_utility_ratio") or 0) >= floor]
    if not eligible:
        return None
    return max(eligible, key=lambda r: (r["forget_quality"] or 0, r["model_utility_ratio"]))


#: the relearning attack of the target runs: the README demo's (5 steps at lr 1e-3)
TARGET_RELEARN = {"steps": 5, "learning_rate": 1e-3, "batch_size": 8}
TARGET_KEYS = HEADLINE + ("model_utility_ratio",)
#: a met target with the oracle's forget quality below this is a false "forgotten"
FALSE_FORGOTTEN_BELOW = 0.05
#: the verdict's checks of forgetting itself (beside utility, relearning, confirmation)
FORGETTING_CHECKS = ("knowledge", "membership")
#: target runs depend on the verdict too: bumped when it changes (2: the relearning check
#: against the holdout's own relearning, 2026-12-05; 3: that reference averaged over up
#: to three holdout groups; 4: sharpness-aware steps under match_holdout keep only the
#: sharpness of answers at their ceilings; 5: sam_steer lowers the radius only when the
#: utility check fails; 6: steps of 1.5, and a move brings the next probe forward; 7: ROUGE-L
#: in the confirming utility estimate, the published-point rule's first tier, steering cap 3x;
#: 8: a point in that tier has its utility confirmed, met or not; 9: rows carry utility
#: components, points their parts; 10: the knowledge check takes Mann-Whitney too; 11:
#: Mann-Whitney one-sided, rows say whether the oracle passes the forgetting checks; 12:
#: Mann-Whitney as twice its one-sided p-value; 13: rows say whether the forgetting
#: checks alone passed)
TARGET_RUNS_VERSION = 13


def run_target_job(
    bench: Bench,
    method: str,
    seed: int,
    workdir: Path,
    overrides: dict | None = None,
    target: dict | None = None,
    then: dict | None = None,
    keep: Path | None = None,
) -> dict:
    """One default job of ``method`` through the service's pipeline; its figures.
    ``overrides``: hyperparameters set by hand (only to compare candidate defaults);
    ``target``: target fields other than the defaults (e.g. a larger ``max_epochs``);
    ``then``: ``{"hyperparameters": ..., "target": ...}`` of a second job that continues
    the first (``continue_from``) with those fields changed, as a user can; the row is
    the second job's, with the first's verdict and figures under ``first``. ``keep``: a
    folder to copy the published model into (as ``<method>-build<b>-seed<s>``) before the
    run's folder is cleared, e.g. for ``bench/relearn_check.py --models``; a cached run
    has no model left to keep."""
    import shutil

    from core.pipeline import JobInputs, OracleInput, run_job
    from core.spec import parse_job_spec

    data = bench.assets.data
    identity = [RUNS_VERSION, bench.preset, "target", method, seed, overrides or {}]
    identity.append(TARGET_RUNS_VERSION)
    if bench.holdout_subjects:
        identity.append({"holdout_subjects": bench.holdout_subjects})
    if bench.build_seed:
        identity.append({"build": bench.build_seed})
    key = json.dumps(
        identity + ([target] if target else []) + ([{"then": then}] if then else []),
        sort_keys=True,
    )
    if key in bench.cache:
        return dict(bench.cache[key])
    fields = {
        "model": str(bench.assets.target),
        "forget": str(data["forget10"]),
        "retain": str(data["retain90"]),
        "method": method,
        "hyperparameters": overrides or {},
        "evaluation": {
            "holdout": str(data["holdout"]),
            "utility": [str(data["world_facts"])],
            "oracle": str(bench.assets.retrain),
            "relearn": TARGET_RELEARN,
            **bench.spec.model_dump(include={"max_samples", "max_new_tokens", "batch_size"}),
        },
        "seed": seed,
        **({"target": target} if target else {}),
    }
    spec = parse_job_spec(fields)
    inputs = JobInputs(
        model=str(bench.assets.target),
        forget=data["forget10"],
        retain=data["retain90"],
        holdout=data["holdout"],
        utility={"world_facts": data["world_facts"]},
        oracles=[OracleInput(str(bench.assets.retrain), model=str(bench.assets.retrain))],
    )
    # Named by the run's whole identity: target runs of other settings may run beside it
    # in another process, and each clears its folder first.
    folder = workdir / f"{method}-{seed}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    shutil.rmtree(folder, ignore_errors=True)
    started = time.monotonic()
    outcome = run_job(spec, inputs, folder)
    first = None
    if then:
        first = _target_figures(outcome)
        spec = parse_job_spec(
            {
                **fields,
                "hyperparameters": {**(overrides or {}), **then.get("hyperparameters", {})},
                "target": {**(target or {}), **then.get("target", {})},
                "continue_from": "first-phase",
            }
        )
        outcome = run_job(spec, inputs, folder, resume=True)
    row = _target_figures(outcome)
    if first is not None:
        row["first"] = first
    row.update(
        seed=seed,
        seconds=round(time.monotonic() - started, 1),
        hyperparameters=outcome.manifest.get("hyperparameters"),
    )
    if keep is not None:
        kept = keep / f"{method}-build{bench.build_seed}-seed{seed}"
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(outcome.checkpoint_dir, kept)
    shutil.rmtree(folder, ignore_errors=True)
    bench._save(key, row)
    return row


def _target_figures(outcome) -> dict:
    from core.evaluation.next_steps import oracle_check

    summary = outcome.report["summary"]
    relearn = outcome.report.get("relearn") or {}
    row = {key: summary.get(key) for key in TARGET_KEYS}
    row.update(
        target_met=bool(summary.get("target_met")),
        verdict=(summary.get("verdict") or {}).get("status"),
        verdict_reason=(summary.get("verdict") or {}).get("reason"),
        selected_step=summary.get("selected_step"),
        steps=outcome.steps,
        stopped=summary.get("stopped"),
        learning_rate=outcome.learning_rate,
        relearn_unseen_vs_oracle=relearn.get("unseen_probability_vs_oracle"),
        relearn_unseen_after=(relearn.get("after_attack_unseen") or {}).get("forget_probability"),
        relearn_oracle_unseen_after=(
            ((relearn.get("oracle") or {}).get("after_attack_unseen") or {}).get(
                "forget_probability"
            )
        ),
        evaluation_share=(outcome.report.get("training") or {})
        .get("evaluation_cost", {})
        .get("share_of_training"),
        utility_components=_utility_components(outcome.report),
        # the oracle under the verdict's forgetting checks against the same holdout set:
        # where it fails, no model that forgot as well as the oracle can meet the target
        oracle_passes=(summary.get("oracle_checks") or {}).get("passes"),
        # the published model's knowledge and membership checks, without relearning and
        # utility: what would say "forgotten" if those two were all the verdict had
        forgetting_passes=_forgetting_passes(summary.get("verdict") or {}),
        oracle_knowledge_p=(oracle_check(summary, "knowledge") or {}).get("value"),
        # the published model's own checks, named as a retrain's row names them, so that
        # the knowledge threshold can be read off runs and retrains alike
        knowledge_p=_verdict_value(summary, "knowledge"),
        membership_auc=_verdict_value(summary, "membership"),
        # the published model's, for forget quality against several oracles
        forget_truth_ratios=(((outcome.evaluation or {}).get("sets") or {}).get("forget") or {})
        .get("samples", {})
        .get("truth_ratio"),
        trajectory=[
            {
                "step": point["step"],
                "status": point["verdict"]["status"],
                **{
                    key: point["metrics"].get(key)
                    for key in (
                        "measured_by",
                        "forget_probability",
                        "holdout_probability",
                        "membership_auc",
                        "knowledge_p",
                        "utility_ratio",
                        "utility_parts",
                        "retain_ratio",
                        "relearn_ratio",
                        "forget_matched",
                        "forget_truth_ratio",
                        "holdout_truth_ratio",
                        "sam_rho",
                        # forget_tokens both: each part against the holdout's same part
                        "rest_membership_auc",
                        "facts_membership_auc",
                        "rest_matched",
                        "facts_matched",
                    )
                },
            }
            for point in outcome.report.get("trajectory") or []
        ],
    )
    return row


def _verdict_value(summary: dict, name: str):
    checks = (summary.get("verdict") or {}).get("checks") or []
    return next((c.get("value") for c in checks if c.get("name") == name), None)


def _forgetting_passes(verdict: dict) -> bool | None:
    """Whether the verdict's knowledge and membership checks all passed (None: neither
    ran)."""
    checks = [c for c in verdict.get("checks") or [] if c.get("name") in FORGETTING_CHECKS]
    return all(c.get("passed") for c in checks) if checks else None


def _utility_components(report: dict) -> dict:
    """The report's model utility components (probability, ROUGE-L, truth-ratio score
    per retain and utility set) of the original, the published model and the oracle:
    what part of utility a job lost (docs/minitofu.md)."""
    from core.evaluation.next_steps import report_utility

    return {model: report_utility(report, model) for model in ("before", "after", "oracle")}


def summarize_target(rows: list[dict], original_mu: float) -> dict:
    out = summarize(rows, original_mu)
    out["target_met"] = all(r["target_met"] for r in rows)
    out["target_met_runs"] = sum(r["target_met"] for r in rows)
    # issue 8's false "forgotten": the target met while the oracle's forget quality is
    # below 0.05; the goal is none
    out["false_forgotten_runs"] = sum(
        r["target_met"] and (r["forget_quality"] or 0.0) < FALSE_FORGOTTEN_BELOW for r in rows
    )
    # near misses: the forgetting checks passed while the oracle's forget quality is below
    # 0.05, so that only relearning, utility or confirmation kept the verdict honest
    out["forgetting_false_runs"] = sum(
        bool(r.get("forgetting_passes")) and (r["forget_quality"] or 0.0) < FALSE_FORGOTTEN_BELOW
        for r in rows
    )
    # runs whose oracle fails the verdict's forgetting checks: the verdict's own floor
    out["oracle_fails_runs"] = sum(r.get("oracle_passes") is False for r in rows)
    out["forget_quality_min"] = min((r["forget_quality"] or 0.0) for r in rows)
    out["forget_quality_counts"] = quality_counts([r["forget_quality"] or 0.0 for r in rows])
    out["model_utility_ratio"] = statistics.fmean(
        r["model_utility_ratio"] for r in rows if r.get("model_utility_ratio") is not None
    )
    for key in ("selected_step", "relearn_unseen_vs_oracle", "evaluation_share"):
        values = [r[key] for r in rows if r.get(key) is not None]
        out[key] = statistics.fmean(values) if values else None
    out["issue_goal"] = issue_goal(rows)
    return out


def run_targets(
    bench: Bench,
    methods,
    seeds,
    log,
    workdir: Path,
    overrides: dict | None = None,
    target: dict | None = None,
    then: dict | None = None,
    keep: Path | None = None,
) -> dict:
    original = bench.reference_row(bench.original)
    retrain = bench.reference_row(bench.oracle)
    original_mu = original["model_utility"]
    results = {
        "original": {**original, "model_utility_ratio": 1.0},
        "retrain": {**retrain, "model_utility_ratio": retrain["model_utility"] / original_mu},
    }
    for method in methods:
        rows = []
        for seed in seeds:
            row = run_target_job(
                bench, method, seed, workdir, (overrides or {}).get(method), target, then, keep
            )
            rows.append(row)
            log(
                f"{method} seed {seed}: {row['verdict']} (target met: {row['target_met']}) at "
                f"step {row['selected_step']}, FQ {_num(row['forget_quality'])}, MU ratio "
                f"{_num(row['model_utility_ratio'])}, relearn vs oracle "
                f"{_num(row['relearn_unseen_vs_oracle'])}"
            )
        results[method] = summarize_target(rows, original_mu)
    return results


def run_target_builds(
    benches: list[Bench], methods, seeds, log, workdir: Path, *args, keep: Path | None = None
) -> dict:
    """``run_targets`` on each asset build; with more than one, each method's row is
    summarized over every (build, seed) run (each run's utility ratio against its own
    build's original) and the original and oracle rows are means over the builds."""
    per_build = []
    for bench in benches:
        if len(benches) > 1:
            log(f"build {bench.build_seed}: {bench.assets.root}")
        per_build.append(run_targets(bench, methods, seeds, log, workdir, *args, keep=keep))
    if len(per_build) == 1:
        return per_build[0]
    builds = [bench.build_seed for bench in benches]
    results = {
        name: {
            **_mean_row([result[name] for result in per_build]),
            "builds": builds,
            "per_build": [result[name] for result in per_build],
        }
        for name in ("original", "retrain")
    }
    original_mu = results["original"]["model_utility"]
    for method in methods:
        rows = [
            {**row, "build_seed": build}
            for build, result in zip(builds, per_build)
            for row in result[method]["runs"]
        ]
        results[method] = {**summarize_target(rows, original_mu), "builds": builds}
    return results


def run_retrains(benches: list[Bench], count: int, log) -> dict:
    """``count`` retrains of other training seeds per build, scored as a job's published
    model (``bench/retrain_seeds.py``): what perfect forgetting scores. Cached like runs."""
    retrains = _bench_module("retrain_seeds")

    rows = []
    for bench in benches:
        for seed in range(1, count + 1):
            key = json.dumps(
                [
                    RUNS_VERSION,
                    bench.preset,
                    "retrain-seed",
                    retrains.SEED_OFFSET + seed,
                    TARGET_RUNS_VERSION,
                    TARGET_RELEARN,
                ]
            )
            if key not in bench.cache:
                bench._save(key, retrains.retrain_row(bench, seed, TARGET_RELEARN, MAX_LENGTH))
            row = {**bench.cache[key], "build_seed": bench.build_seed}
            rows.append(row)
            log(
                f"build {bench.build_seed}, retrain seed {seed}: {row['verdict']} "
                f"({row['verdict_reason']}), FQ {_num(row['forget_quality'])}, MU ratio "
                f"{_num(row['model_utility_ratio'])}, relearning {_num(row['relearn_ratio'])}x "
                "the holdout's"
            )
    oracles = oracle_truth_ratios(benches)
    for row in rows:
        row["forget_quality_pooled"] = pooled_forget_quality(row, oracles, rows)
    summary = {**summarize_retrains(rows), **_pooled_summary(rows)}
    counts = summary["forget_quality_counts"]
    log(
        "retrains of other seeds (perfect forgetting): oracle forget quality mean "
        f"{_num(summary['forget_quality'])}, min {_num(summary['forget_quality_min'])}, "
        f">= 0.9 in {counts['at_least_0.9']}/{len(rows)}, < 0.5 in {counts['below_0.5']}"
        f"/{len(rows)}, >= 0.05 in {counts['at_least_0.05']}/{len(rows)}; against the pooled "
        f"oracle and other retrains: mean {_num(summary['forget_quality_pooled'])}; utility "
        f"{_num(summary['model_utility_ratio_min'])}-{_num(summary['model_utility_ratio_max'])}x; "
        f"the verdict says forgotten for {summary['target_met_runs']}"
        f"/{len(rows)}, its forgetting checks pass {summary['forgetting_passes_runs']}/{len(rows)}"
    )
    return summary


def compare_with_retrains(row: dict, retrains: dict, benches: list[Bench]) -> None:
    """A method's summary row beside the retrains of its builds: ``retrain_parity``, the
    goal stated against them, and forget quality against the pooled oracles per run."""
    build = benches[0].build_seed
    row["retrain_parity"] = retrain_parity(row["runs"], retrains["runs"], build)
    row["retrain_goal"] = retrain_goal(row["runs"], retrains["runs"], build)
    oracles = oracle_truth_ratios(benches)
    for run in row["runs"]:
        run["forget_quality_pooled"] = pooled_forget_quality(run, oracles, retrains["runs"], build)
    row.update(_pooled_summary(row["runs"]))


def oracle_truth_ratios(benches: list[Bench]) -> dict[int, list]:
    return {b.build_seed: b.oracle.sets["forget"].samples.get("truth_ratio") for b in benches}


def _pooled_summary(runs: list[dict]) -> dict:
    pooled = [
        r["forget_quality_pooled"] for r in runs if r.get("forget_quality_pooled") is not None
    ]
    return {
        "forget_quality_pooled": statistics.fmean(pooled) if pooled else None,
        "forget_quality_pooled_min": min(pooled) if pooled else None,
    }


def print_goals(methods: dict, log) -> None:
    """Which parts of issue 8's goal each method meets, as the issue states it and (with
    ``--retrains``) against what retrains of other seeds do."""
    for name, row in methods.items():
        for label, key in (("issue's goal", "issue_goal"), ("against retrains", "retrain_goal")):
            goal = row.get(key)
            if goal is None:
                continue
            failed = [part for part, ok in goal.items() if part != "met" and not ok]
            log(
                f"{name}: {label} {'met' if goal['met'] else 'not met'}"
                + (f" (fails {', '.join(failed)})" if failed else "")
            )


def quality_counts(quality: list[float]) -> dict[str, int]:
    """How many runs' oracle forget quality reach the goal's 0.9 (asked of the mean), fall
    below its 0.5 (asked of none), and reach 0.05, where the KS test no longer tells the
    model from the oracle at the 5% level. (For two models that forgot alike, the p-value
    is about uniform on [0, 1]: retrains of other seeds show what the first two ask.)"""
    return {
        "at_least_0.9": sum(q >= 0.9 for q in quality),
        "below_0.5": sum(q < 0.5 for q in quality),
        "at_least_0.05": sum(q >= 0.05 for q in quality),
    }


def retrain_parity(runs: list[dict], retrains: list[dict], build: int = 0) -> float | None:
    """How a method's forget quality compares with perfect forgetting's on the same
    builds: the share of (run, retrain of the run's build) pairs where the run's oracle
    forget quality is at least the retrain's, ties counted half (an AUC). About 0.5 is as
    good as retraining; issue 8's 0.9 asks more of one oracle than a retrain gets
    (docs/minitofu.md). ``build``: the build of runs that do not name theirs."""
    wins = pairs = 0.0
    for run in runs:
        ours = run["forget_quality"] or 0.0
        for other in retrains:
            if other["build_seed"] != run.get("build_seed", build):
                continue
            theirs = other["forget_quality"] or 0.0
            wins += 1.0 if ours > theirs else 0.5 if ours == theirs else 0.0
            pairs += 1
    return wins / pairs if pairs else None


def pooled_forget_quality(
    run: dict, oracle_ratios: dict[int, list], retrains: list[dict], build: int = 0
) -> float | None:
    """Forget quality against several oracles: the KS p-value of the run's forget truth
    ratios against those of its build's oracle and of that build's retrains of other
    seeds, pooled (a retrain is left out of its own reference). Against one oracle, its
    training seed is part of every figure (retrains of other seeds score 0.24-0.89);
    pooled, the reference is what retrained models answer rather than what one did.
    ``build``: the build of runs that do not name theirs."""
    build = run.get("build_seed", build)
    ours = _finite(run.get("forget_truth_ratios"))
    reference = _finite(oracle_ratios.get(build))
    for other in retrains:
        if other["build_seed"] == build and other.get("training_seed") != run.get("training_seed"):
            reference += _finite(other.get("forget_truth_ratios"))
    if not ours or not reference:
        return None
    return metrics.forget_quality(ours, reference)


def _finite(values) -> list[float]:
    return [v for v in values or [] if v is not None and math.isfinite(v)]


#: issue 8's goal on forget10, as the issue states it: oracle forget quality (mean over
#: runs, and the lowest run's), utility against the original's, and the relearning
#: attack's unseen forget probability against the oracle's under the same attack
ISSUE_GOAL = {
    "forget_quality_mean": 0.9,
    "forget_quality_min": 0.5,
    "model_utility_ratio": 0.95,
    "relearn_vs_oracle": 1.5,
}


def issue_goal(runs: list[dict]) -> dict:
    """Each part of issue 8's goal on a method's runs (``target_met`` on every run too),
    and ``met``. Retrains of other seeds meet neither forget-quality part (stop 40)."""
    quality = [r["forget_quality"] or 0.0 for r in runs]
    checks = {
        "forget_quality_mean": statistics.fmean(quality) >= ISSUE_GOAL["forget_quality_mean"],
        "forget_quality_min": min(quality) >= ISSUE_GOAL["forget_quality_min"],
        "model_utility": all(
            (r.get("model_utility_ratio") or 0.0) >= ISSUE_GOAL["model_utility_ratio"] for r in runs
        ),
        "target_met": all(r["target_met"] for r in runs),
        "relearning": _relearning_holds(runs),
    }
    return {**checks, "met": all(checks.values())}


def retrain_goal(runs: list[dict], retrains: list[dict], build: int = 0) -> dict:
    """Issue 8's goal stated against what retrains of other seeds on the same builds do
    (what a perfect unlearner meets): forget quality at least a retrain's as often as
    not (``retrain_parity`` >= 0.5); every run indistinguishable from the oracle at the
    5% level, as every retrain was; each run's utility at or above the issue's floor or
    the lowest of its build's retrains, whichever is lower; the verdict met on at least
    the share of those retrains it calls forgotten; and the relearning figure as the
    issue asks. Each part asks at most what the issue does, and at most what retraining
    itself gets."""
    parity = retrain_parity(runs, retrains, build)
    # per build: the utility floor a run is held to (the issue's, or its retrains' lowest)
    floors: dict[int, float] = {}
    for r in retrains:
        floors[r["build_seed"]] = min(
            floors.get(r["build_seed"], ISSUE_GOAL["model_utility_ratio"]),
            r["model_utility_ratio"],
        )
    builds = {run.get("build_seed", build) for run in runs}
    mine = [r for r in retrains if r["build_seed"] in builds]
    checks = {
        "retrain_parity": parity is not None and parity >= 0.5,
        "forget_quality_all_at_least_0.05": all(
            (r["forget_quality"] or 0.0) >= FALSE_FORGOTTEN_BELOW for r in runs
        ),
        "model_utility": all(
            run.get("build_seed", build) in floors
            and (run.get("model_utility_ratio") or 0.0) >= floors[run.get("build_seed", build)]
            for run in runs
        ),
        "target_met": bool(mine)
        and sum(r["target_met"] for r in runs) / len(runs)
        >= sum(bool(r["target_met"]) for r in mine) / len(mine),
        "relearning": _relearning_holds(runs),
    }
    return {**checks, "met": all(checks.values())}


def _relearning_holds(runs: list[dict]) -> bool:
    return all(
        r.get("relearn_unseen_vs_oracle") is not None
        and r["relearn_unseen_vs_oracle"] <= ISSUE_GOAL["relearn_vs_oracle"]
        for r in runs
    )


def summarize_retrains(rows: list[dict]) -> dict:
    """Issue 8's goal applied to retrains of other seeds: the forget quality a perfect
    unlearner gets against one oracle (mean, min, how many reach 0.9 or fall below 0.5),
    its utility spread, and what the verdict says of it."""
    quality = [r["forget_quality"] or 0.0 for r in rows]
    utility = [r["model_utility_ratio"] for r in rows]
    return {
        "runs": rows,
        "forget_quality": statistics.fmean(quality),
        "forget_quality_median": statistics.median(quality),
        "forget_quality_min": min(quality),
        "forget_quality_counts": quality_counts(quality),
        "model_utility_ratio": statistics.fmean(utility),
        "model_utility_ratio_min": min(utility),
        "model_utility_ratio_max": max(utility),
        "target_met_runs": sum(bool(r["target_met"]) for r in rows),
        "forgetting_passes_runs": sum(bool(r["forgetting_passes"]) for r in rows),
    }


def _mean_row(rows: list[dict]) -> dict:
    """The numeric fields' means over rows (the reference models of several builds)."""
    keys = [
        k for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    return {
        key: statistics.fmean(row[key] for row in rows)
        for key in keys
        if all(isinstance(row.get(key), (int, float)) for row in rows)
    }


def print_target_table(methods: dict, log) -> None:
    header = (
        f"{'model':<10}{'FQ':>9}{'FQ min':>9}{'pooled':>9}{'FQ>=.05':>9}{'MU/orig':>9}{'met':>6}{'step':>7}"
        f"{'relearn/oracle':>16}{'P(forget)':>11}{'PrivLeak':>10}{'false':>7}"
        f"{'near':>6}{'oracle fails':>14}{'vs retrains':>13}"
    )
    log(header)
    log("-" * len(header))
    for name, row in methods.items():
        met = row.get("target_met_runs")
        runs = len(row.get("seeds", []))
        indistinct = (row.get("forget_quality_counts") or {}).get("at_least_0.05")
        log(
            f"{name:<10}{_num(row.get('forget_quality')):>9}{_num(row.get('forget_quality_min')):>9}"
            f"{_num(row.get('forget_quality_pooled')):>9}"
            f"{f'{indistinct}/{runs}' if indistinct is not None else '-':>9}"
            f"{_num(row.get('model_utility_ratio')):>9}"
            f"{f'{met}/{runs}' if met is not None else '-':>6}"
            f"{_num(row.get('selected_step')):>7}{_num(row.get('relearn_unseen_vs_oracle')):>16}"
            f"{_num(row.get('forget_probability')):>11}{_num(row.get('privleak')):>10}"
            f"{row.get('false_forgotten_runs', '-'):>7}"
            f"{row.get('forgetting_false_runs', '-'):>6}"
            f"{row.get('oracle_fails_runs', '-'):>14}"
            f"{_num(row.get('retrain_parity')):>13}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("results.json"))
    parser.add_argument(
        "--preset", default="bench", help="demo asset preset (tiny for a smoke run)"
    )
    parser.add_argument(
        "--seeds",
        default="1,2,3",
        help="comma-separated seeds (the sweep chose on seed 0; these are held out)",
    )
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated rows; beyond the methods: {', '.join(EXTRA_ROWS)}; and "
        "guard (GUARD, evaluated on generations; not with --target or --sweep)",
    )
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "bench")
    parser.add_argument(
        "--sweep",
        nargs="?",
        const=["grid"],
        type=lambda value: value.split(","),
        help="run hyperparameter sweeps instead, comma-separated: grid (round 1), kl (2), "
        "push (3), flatloku (FLAT and LoKU rows); the best per utility floor is taken over all "
        "of them",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="ignore runs cached by earlier invocations"
    )
    parser.add_argument(
        "--overrides",
        type=json.loads,
        default=None,
        help="with --target: JSON {method: {hyperparameter: value}} to compare candidate "
        "defaults (the goal is stated for no overrides)",
    )
    parser.add_argument(
        "--target-settings",
        type=json.loads,
        default=None,
        help="with --target: JSON of target fields other than the defaults, e.g. "
        "'{\"max_epochs\": 40}'",
    )
    parser.add_argument(
        "--then",
        type=json.loads,
        default=None,
        help='with --target: JSON {"hyperparameters": {...}, "target": {...}} of a '
        "second job that continues each first one (continue_from) with those fields "
        "changed, e.g. sharpness-aware epochs after plain ones",
    )
    parser.add_argument(
        "--holdout-subjects",
        type=int,
        default=None,
        help="with --target: give the jobs only the first N subjects of the preset's "
        "holdout set (to see what a smaller holdout does to the verdict on the same model)",
    )
    parser.add_argument(
        "--builds",
        default="0",
        help="with --target: comma-separated asset build seeds (each builds its own "
        "authors, tokenizer, target and oracle); rows are summarized over every build and "
        "seed, since one build's figures are one draw (docs/minitofu.md)",
    )
    parser.add_argument(
        "--retrains",
        type=int,
        default=0,
        help="with --target: also train N retrains of other training seeds per build (the "
        "oracle's data and recipe) and score them as a job's published model: what perfect "
        "forgetting scores against the one oracle (bench/retrain_seeds.py); --methods '' "
        "runs these alone",
    )
    parser.add_argument(
        "--keep-models",
        type=Path,
        default=None,
        help="with --target: copy each run's published model into this folder (as "
        "<method>-build<b>-seed<s>), e.g. for bench/relearn_check.py --models; runs "
        "answered from the cache keep nothing (use --fresh)",
    )
    parser.add_argument(
        "--target",
        action="store_true",
        help="run the default job of each method (no hand-set hyperparameters) with its "
        "target, through the job pipeline (training methods only: not the guard row)",
    )
    args = parser.parse_args(argv)
    if args.sweep and not set(args.sweep) <= set(SWEEPS):
        parser.error(f"--sweep: choose from {', '.join(SWEEPS)}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in (*DEFAULTS, *GENERATION_ROWS)]
    if unknown:
        parser.error(
            f"--methods: unknown {', '.join(unknown)}; choose from "
            f"{', '.join((*DEFAULTS, *GENERATION_ROWS))}"
        )
    if args.retrains and not args.target:
        parser.error("--retrains: only with --target")
    if args.keep_models and not args.target:
        parser.error("--keep-models: only with --target")
    if (args.target or args.sweep) and set(methods) & set(GENERATION_ROWS):
        parser.error(
            "--methods guard: GUARD trains nothing, so it has no --target job or --sweep; "
            "its row is in the default mode"
        )

    def log(message: str) -> None:
        print(message, flush=True)

    started = time.monotonic()
    seeds = [int(s) for s in args.seeds.split(",")]
    builds = [int(b) for b in args.builds.split(",")]
    if len(builds) > 1 and not args.target:
        parser.error("--builds: more than one build only with --target")
    benches = [Bench(args.preset, args.cache, log, fresh=args.fresh, build_seed=b) for b in builds]
    bench = benches[0]
    if args.target:
        if args.holdout_subjects:
            for each in benches:
                each.limit_holdout(args.holdout_subjects, args.cache)
        results = run_target_builds(
            benches,
            methods,
            seeds,
            log,
            args.cache / "target-runs",
            args.overrides,
            args.target_settings,
            args.then,
            keep=args.keep_models,
        )
        output = {
            "methods": results,
            "seeds": seeds,
            "mode": "target",
            "builds": [each.assets.identity() for each in benches],
        }
        table = dict(results)
        if args.retrains:
            output["retrain_seeds"] = retrains = run_retrains(benches, args.retrains, log)
            for method in methods:
                compare_with_retrains(results[method], retrains, benches)
            table["retrains"] = {
                **retrains,
                "seeds": [run["seed"] for run in retrains["runs"]],
            }
        print_target_table(table, log)
        print_goals({method: results[method] for method in methods}, log)
        if args.retrains:
            log(
                "retrains: the oracle's data and recipe with other training seeds (perfect "
                "forgetting); met: the final verdict says forgotten (a job's also asks two "
                "evaluation points in a row)"
            )
    elif args.sweep:
        output = {
            "sweep": run_sweep(
                bench,
                methods,
                seeds[0],
                log,
                [SWEEPS[name] for name in args.sweep],
            ),
            "utility_floor": UTILITY_FLOOR,
        }
    else:
        results = run_defaults(bench, methods, seeds, log)
        print_table({k: v for k, v in results.items() if k not in GENERATION_ROWS}, log)
        log("")
        print_generation_table(results, log)
        output = {"methods": results, "seeds": seeds, "utility_floor": UTILITY_FLOOR}
    output.update(
        preset=args.preset, seconds=round(time.monotonic() - started, 1), demo=bench.assets.summary
    )
    args.out.write_text(json.dumps(output, indent=2, default=str))
    log(f"wrote {args.out} in {output['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
