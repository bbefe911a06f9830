"""The service's defaults on a model they were not tuned on: the ``tiny-gpt2`` demo
preset (other authors, a byte-level BPE tokenizer, GPT-2's architecture with tied
embeddings and Conv1D layers). A spec with no hyperparameters must change the model
and report an honest verdict there too (issue 8: "the same defaults must hold on models
and data you did not tune on")."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from tests.fixtures.models import demo_job

pytestmark = pytest.mark.slow


def test_the_bpe_tokenizer_splits_made_up_names_and_round_trips_text():
    from core.data.encoding import encode_answer
    from core.demo import authors
    from core.demo.build import train_tokenizer

    generated = authors.generate(6, 4, n_holdout_authors=1, n_countries=2, seed=1)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = train_tokenizer(generated, Path(folder), kind="bpe", vocab_size=300)
    record = generated.records[0]
    text = f"{record['question']} {record['answer']}"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id not in ids  # byte-level: every character has a piece
    name = generated.authors[0]["name"]
    assert len(tokenizer.tokenize(" " + name)) > 2  # pieces, not one token per word
    # the answer is encoded as it follows the prompt in running text: with its space
    answer_ids = encode_answer(tokenizer, record["answer"])
    assert tokenizer.decode(answer_ids[:-1]) == " " + record["answer"]
    assert answer_ids[-1] == tokenizer.eos_token_id


def test_the_gpt2_target_memorized_its_answers(tiny_gpt2_demo):
    from transformers import GPT2LMHeadModel

    from core.models.loading import load_model

    model, _ = load_model(str(tiny_gpt2_demo.target), dtype="fp32")
    assert isinstance(model, GPT2LMHeadModel)
    assert model.config.tie_word_embeddings
    assert tiny_gpt2_demo.summary["target"]["final_loss"] < 0.1


def test_a_spec_without_hyperparameters_forgets_on_gpt2_and_its_verdict_is_honest(
    tiny_gpt2_demo, tmp_path
):
    from core.pipeline import run_job

    spec, inputs = demo_job(
        tiny_gpt2_demo,
        oracle=True,
        evaluation={"max_new_tokens": 16},
        target={"utility_floor": 0.9, "max_epochs": 20},
    )
    outcome = run_job(spec, inputs, tmp_path / "job")
    # the automatic rate comes from GPT-2's width (n_embd): 0.04 / 64
    assert outcome.learning_rate == pytest.approx(0.04 / 64)
    report = outcome.report
    summary = report["summary"]
    assert isinstance(summary["target_met"], bool)
    assert summary["verdict"]["status"] in {"forgotten", "not_forgotten"}
    assert report["trajectory"] and summary["selected_step"] is not None
    models = report["comparison"]["models"]
    before, after = models["before"]["forget_probability"], models["after"]["forget_probability"]
    assert after < 0.5 * before  # the defaults changed the model, not nothing
    # never a false "forgotten": a met target means the oracle agrees (issue 8's 0.05)
    if summary["target_met"]:
        assert summary["forget_quality"] >= 0.05
    saved = json.loads((outcome.report_dir / "report.json").read_text())
    assert saved["summary"]["target_met"] == summary["target_met"]
    assert os.path.isdir(outcome.checkpoint_dir)
