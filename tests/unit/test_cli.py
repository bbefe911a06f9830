"""The `obliviate` command on the tiny demo: a job spec in, a checkpoint, metrics and a
report out; bad specs fail with the field named."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from tests.fixtures.models import TINY_PRESET

pytestmark = pytest.mark.slow


@pytest.fixture
def home(tmp_path, tiny_demo, monkeypatch):
    home = tmp_path / "home"
    shutil.copytree(tiny_demo.root, home / "demo" / TINY_PRESET)
    monkeypatch.setenv("OBLIVIATE_HOME", str(home))
    monkeypatch.setenv("OBLIVIATE_DEMO_PRESET", TINY_PRESET)
    from core.settings import get_settings

    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


def test_unlearn_writes_checkpoint_metrics_and_report(home, tmp_path):
    spec = {
        "model": "demo-target",
        "forget": "ds_demo_forget10",
        "retain": "ds_demo_retain90",
        "method": "npo",
        "hyperparameters": {
            "learning_rate": 1e-3,
            "epochs": 2,
            "batch_size": 4,
            "gradient_accumulation_steps": 1,
        },
        "evaluation": {
            "holdout": "ds_demo_holdout",
            "oracle": "demo-retrain",
            "max_new_tokens": 16,
        },
        "target": {"max_epochs": 2},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["unlearn", str(tmp_path / "job.yaml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    metrics = [row for row in rows if row.get("type") != "evaluation"]
    points = [row for row in rows if row.get("type") == "evaluation"]
    assert [m["step"] for m in metrics] == list(range(1, 9))  # 16 forget examples / 4, 2 epochs
    assert [p["step"] for p in points] == [4, 8]  # an evaluation point per epoch
    assert points[-1]["verdict"]["status"] == "not_forgotten"  # 2 epochs of npo on the tiny demo
    assert "verdict: not forgotten" in result.output
    assert "next: " in result.output  # what to try, from the report's next_steps
    manifest = json.loads((out / "checkpoint" / "manifest.json").read_text())
    assert manifest["method"] == "npo" and {f["path"] for f in manifest["files"]} >= {
        "model.safetensors",
        "config.json",
    }
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["summary"]["forget_quality"] is not None
    assert (out / "report" / "report.html").exists()


def test_unlearn_names_the_stored_oracle_it_cannot_read(home, tmp_path):
    # job:<id> oracles live in the service's store; in a list the error names the one
    spec = {
        "model": "demo-target",
        "forget": "ds_demo_forget10",
        "retain": "ds_demo_retain90",
        "evaluation": {"oracle": ["demo-retrain", "job:job_earlier"]},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["unlearn", str(tmp_path / "job.yaml"), "--out", str(out)])
    assert result.exit_code != 0
    output = " ".join(result.output.split())
    assert "(evaluation.oracle.1)" in output and "stored by the service" in output
    assert not (out / "checkpoint").exists()


@pytest.mark.parametrize(
    "method,extra",
    [
        ("flat", {}),  # forget data only: no retain set
        # with a target and merge: true, the verdict's relearning attack runs on the
        # merged model, whose weights are all frozen (it trains and restores them all)
        (
            "loku",
            {"retain": "ds_demo_retain90", "lora": {"r": 4, "init": "fila", "merge": True}},
        ),
    ],
)
def test_unlearn_runs_flat_without_retain_and_loku_with_fila(home, tmp_path, method, extra):
    spec = {
        "model": "demo-target",
        "forget": "ds_demo_forget10",
        "method": method,
        "hyperparameters": {"learning_rate": 1e-3, "epochs": 1, "batch_size": 8},
        "evaluation": {"holdout": "ds_demo_holdout", "max_new_tokens": 8},
        "target": {"max_epochs": 1},
        **extra,
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["unlearn", str(tmp_path / "job.yaml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "checkpoint" / "manifest.json").read_text())
    assert manifest["method"] == method
    if method == "loku":
        adapter = json.loads((out / "checkpoint" / "adapter_config.json").read_text())
        assert adapter["r"] == 8  # FILA's rank-2r adapter for the original base
        assert (out / "checkpoint" / "merged" / "model.safetensors").exists()


@pytest.mark.parametrize("evaluation", [True, False], ids=["evaluated", "points-only"])
def test_holdout_records_the_job_trains_on_are_left_out_of_the_verdict(home, tmp_path, evaluation):
    # A holdout set that is the retain set is trained-on data, not unseen data: every
    # record is left out, so forgetting cannot be verified (and is not called forgotten),
    # whether the verdict comes from the final evaluation or from an evaluation point.
    spec = {
        "model": "demo-target",
        "forget": "ds_demo_forget10",
        "retain": "ds_demo_retain90",
        "method": "graddiff",
        "hyperparameters": {"learning_rate": 1e-3, "epochs": 1, "batch_size": 8},
        "evaluation": {
            "holdout": "ds_demo_retain90",
            "max_new_tokens": 8,
            "enabled": evaluation,
        },
        "target": {"max_epochs": 1, "membership": "one_sided", "confirm_points": 1},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["unlearn", str(tmp_path / "job.yaml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    # The console wraps long lines and puts the logging call's place at their right.
    output = " ".join(re.sub(r"\S+\.py:\d+", "", result.output).split())
    assert "144 of 144 holdout records are also in the forget" in output
    assert "no unseen holdout records: forgetting cannot be verified" in output
    # The verdict names the cause, not "no holdout set".
    assert "verdict: not verifiable (144 of 144 holdout records" in output
    assert "target not met" in output and "no holdout set" not in output
    if evaluation:
        report = json.loads((out / "report" / "report.json").read_text())
        verdict = report["summary"]["verdict"]
        assert verdict["status"] == "not_verifiable", verdict
        assert verdict["reason"].startswith("144 of 144 holdout records are also in the forget")
        assert report["summary"]["target_met"] is False
        (step,) = report["summary"]["next_steps"]
        assert step["reason"] == "holdout" and step["text"].endswith(verdict["reason"])


def test_a_bad_spec_names_the_field(home, tmp_path):
    (tmp_path / "job.yaml").write_text(
        yaml.safe_dump(
            {
                "model": "demo-target",
                "forget": "ds_demo_forget10",
                "method": "npo",
                "hyperparameters": {"beta": -1},
            }
        )
    )
    result = CliRunner().invoke(
        app, ["unlearn", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert "hyperparameters.beta" in result.output


def test_methods_lists_every_method():
    result = CliRunner().invoke(app, ["methods"])
    assert result.exit_code == 0
    for name in ("simnpo", "npo", "graddiff", "ga", "flat", "loku"):
        assert f"{name} (output: weights)" in result.output
    assert "guard (output: guard)" in result.output
    assert "holdout_fraction=0.2" in result.output and "needs_attention" in result.output


def test_finetune_teaches_a_model_its_data_and_writes_a_loadable_checkpoint(home, tmp_path):
    """The retrain oracle never saw forget10; fine-tuning it there lowers its NLL on it."""
    import torch

    from core.data.encoding import collate, encode_record_set
    from core.data.records import read_records
    from core.models.loading import load_model
    from core.models.scoring import sequence_nll
    from core.spec import DEFAULT_PROMPT_TEMPLATE

    data = home / "demo" / TINY_PRESET / "data" / "forget10.jsonl"
    out = tmp_path / "ft"
    result = CliRunner().invoke(
        app,
        ["finetune", "demo-retrain", str(data), "-o", str(out), "--learning-rate", "3e-3"]
        + ["--epochs", "8", "--batch-size", "4", "--precision", "fp32"],
    )
    assert result.exit_code == 0, result.output

    def mean_nll(folder):
        model, tokenizer = load_model(str(folder), dtype="fp32")
        examples = encode_record_set(
            tokenizer, read_records(data), max_length=64, template=DEFAULT_PROMPT_TEMPLATE
        )
        batch = collate(examples, tokenizer.pad_token_id)
        with torch.no_grad():
            logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        nll, n = sequence_nll(logits, batch["labels"])
        return float((nll / n).mean())

    assert (
        mean_nll(out / "checkpoint")
        < mean_nll(home / "demo" / TINY_PRESET / "models" / "retrain") - 1
    )
    manifest = json.loads((out / "checkpoint" / "manifest.json").read_text())
    assert manifest["method"] == "finetune" and manifest["base_model"] == "demo-retrain"
    assert manifest["data"]["train"]["records"] == 16
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 32  # 16 / 4 x 8 epochs


def test_finetune_rejects_a_bad_option_naming_it(home, tmp_path):
    data = home / "demo" / TINY_PRESET / "data" / "forget10.jsonl"
    result = CliRunner().invoke(
        app, ["finetune", "demo-retrain", str(data), "-o", str(tmp_path), "--precision", "fp8"]
    )
    assert result.exit_code == 2
    assert "precision" in result.output
