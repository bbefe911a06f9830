"""What the verdict studies share: the mini-TOFU assets, the probe sets and the two
reference probes (the original model and the retrain oracle).

Imported by bench/verdict_study.py and bench/forget_objectives.py (run as scripts, so
this folder is on ``sys.path``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from core.data.encoding import encode_record_set  # noqa: E402
from core.data.records import read_records  # noqa: E402
from core.demo import build_demo_assets  # noqa: E402
from core.evaluation.probe import Probe, ProbeSets, probe_model, sample_sets  # noqa: E402
from core.models.loading import load_model  # noqa: E402
from core.spec import DEFAULT_PROMPT_TEMPLATE  # noqa: E402

MAX_LENGTH = 128
PROBE_SAMPLES = 120
#: the holdout is probed as a job probes it (``evaluation.max_samples``' default): a
#: larger holdout whole, not a sample spread thinner over its subjects than the forget
#: set is over its own (docs/verdict.md, "The knowledge test with thirty holdout authors")
HOLDOUT_SAMPLES = 400


@dataclass
class Study:
    assets: object
    full: ProbeSets  # every record of forget10, holdout, retain90, world facts
    sets: ProbeSets  # what a probe scores: PROBE_SAMPLES a set at most, HOLDOUT_SAMPLES holdout
    tokenizer: object
    forget: list = field(default_factory=list)  # encoded forget10
    retain: list = field(default_factory=list)  # encoded retain90
    original: Probe | None = None
    oracle: Probe | None = None

    def encode(self, records):
        return encode_record_set(
            self.tokenizer, records, max_length=MAX_LENGTH, template=DEFAULT_PROMPT_TEMPLATE
        )

    def probe(self, model) -> Probe:
        return probe_model(
            model,
            self.tokenizer,
            self.sets,
            template=DEFAULT_PROMPT_TEMPLATE,
            max_length=MAX_LENGTH,
        )

    def load(self, which: str = "target"):
        """A fresh fp32 copy of the target (the model to unlearn) or the retrain."""
        return load_model(str(getattr(self.assets, which)), dtype="fp32")[0]


def load_study(cache: Path, preset: str = "bench", build: int = 0) -> Study:
    """``build``: an asset build seed (bench/minitofu.py's ``--builds``; its folders)."""
    suffix = f"-build{build}" if build else ""
    assets = build_demo_assets(cache / f"demo-{preset}{suffix}", preset, seed=build)
    data = assets.data
    full = ProbeSets(
        forget=read_records(data["forget10"]),
        holdout=read_records(data["holdout"]),
        retain=read_records(data["retain90"]),
        utility={"world_facts": read_records(data["world_facts"])},
    )
    _, tokenizer = load_model(str(assets.target))
    sets = sample_sets(full, PROBE_SAMPLES)
    sets.holdout = sample_sets(full, HOLDOUT_SAMPLES).holdout
    study = Study(assets, full, sets, tokenizer)
    study.forget, study.retain = study.encode(full.forget), study.encode(full.retain)
    study.original = study.probe(study.load("target"))
    study.oracle = study.probe(study.load("retrain"))
    return study
