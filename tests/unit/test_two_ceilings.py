"""``hyperparameters.forget_tokens: both``: a forget loss on the answers' phrasing (the
tokens that are not facts) and a second one on their fact tokens, each stopped at its own
``match_holdout`` ceiling. The loss is checked against SimNPO's formula worked out here
with plain torch; the ceilings by what each column must do to a step (none past it, all
below it)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from core.data.encoding import IGNORE_INDEX
from core.data.facts import FactFocus, phrasing_examples
from core.data.records import read_records
from core.errors import InvalidRequest
from core.methods import get_method
from core.spec import parse_job_spec
from core.training.loop import Callbacks, run_training
from tests.fixtures.models import demo_job, recording_reporter

BETA, GAMMA = 2.0, 0.5


@pytest.fixture(scope="module")
def paired(tiny_demo, tiny_encoded):
    """Eight of the tiny demo's forget examples that have facts and phrasing: with labels
    on their phrasing only, on their facts only (what ``facts`` trains on), and whole
    with fact labels (what ``both`` trains on)."""
    tokenizer, forget, _ = tiny_encoded
    sets = [read_records(tiny_demo.data[name]) for name in ("forget10", "retain90", "holdout")]
    focus = FactFocus.of(r.answer for s in sets for r in s.records)
    focused = focus.examples(tokenizer, sets[0].records, forget)
    rest = phrasing_examples(forget, focused)
    chosen = [i for i, r in enumerate(rest) if r is not None][:8]
    assert len(chosen) == 8
    both = [replace(forget[i], fact_labels=list(focused[i].labels)) for i in chosen]
    return tokenizer, [rest[i] for i in chosen], [focused[i] for i in chosen], both


def _hparams(**extra):
    return get_method("simnpo").parse_hyperparameters(
        {
            "learning_rate": 1e-3,
            "epochs": 1,
            "batch_size": 8,
            "gradient_accumulation_steps": 1,
            "precision": "fp32",
            "weight_decay": 0,
            "retain_loss": "none",
            "beta": BETA,
            "gamma": GAMMA,
            "forget_coeff": 1.0,
            **extra,
        }
    )


def _train(tiny_demo, tokenizer, examples, ceilings=None, **extra):
    from core.models.loading import load_model

    model, _ = load_model(str(tiny_demo.target), dtype="fp32")
    matching = ceilings is not None
    result = run_training(
        model,
        tokenizer,
        examples,
        None,
        get_method("simnpo"),
        _hparams(match_holdout=matching, **extra),
        seed=5,
        callbacks=Callbacks(
            on_evaluation=lambda point: False,
            forget_ceilings=(lambda: ceilings(len(examples))) if matching else None,
        ),
    )
    weights = {n: p.detach().clone() for n, p in result.model.named_parameters()}
    return result, weights


def _simnpo_by_hand(logits, input_labels):
    """Mean over sequences of -(2/beta) log sigmoid(beta * NLL/|y| - gamma), the NLL
    summed over the labelled next tokens."""
    losses = []
    for row, labels in enumerate(input_labels):
        target = torch.tensor(labels[1:])
        nll = F.cross_entropy(
            logits[row, : len(labels) - 1], target, ignore_index=IGNORE_INDEX, reduction="sum"
        )
        n = int((target != IGNORE_INDEX).sum())
        losses.append(-(2 / BETA) * F.logsigmoid(BETA * nll / n - GAMMA))
    return float(torch.stack(losses).mean())


def test_both_terms_add_up_to_simnpo_on_the_phrasing_plus_simnpo_on_the_facts(tiny_demo, paired):
    from core.models.loading import load_model

    tokenizer, rest, focused, both = paired
    model, _ = load_model(str(tiny_demo.target), dtype="fp32")
    model.eval()
    expected = 0.0
    with torch.no_grad():
        for example, facts in zip(rest, focused):
            logits = model(input_ids=torch.tensor([example.input_ids])).logits
            expected += _simnpo_by_hand(logits, [example.labels]) / len(rest)
            expected += _simnpo_by_hand(logits, [facts.labels]) / len(rest)
    result, _ = _train(tiny_demo, tokenizer, both)
    assert result.history[0].forget_loss == pytest.approx(expected, rel=1e-5)


def test_each_ceiling_column_stops_its_own_term(tiny_demo, paired):
    tokenizer, rest, focused, both = paired
    _, rest_only = _train(tiny_demo, tokenizer, rest)
    _, facts_only = _train(tiny_demo, tokenizer, focused)
    # the phrasing past its ceilings, the facts below theirs: the facts' loss alone
    _, facts_pushed = _train(tiny_demo, tokenizer, both, lambda n: [[-math.inf, math.inf]] * n)
    # the other way round: the phrasing's loss alone
    _, rest_pushed = _train(tiny_demo, tokenizer, both, lambda n: [[math.inf, -math.inf]] * n)
    for name, value in facts_only.items():
        assert torch.allclose(facts_pushed[name], value, atol=1e-6), name
        assert torch.allclose(rest_pushed[name], rest_only[name], atol=1e-6), name
    result, _ = _train(tiny_demo, tokenizer, both, lambda n: [[-math.inf, -math.inf]] * n)
    assert [m.grad_norm for m in result.history] == [0.0] * len(result.history)


def test_the_loop_cuts_the_phrasing_as_the_holdout_measurement_does(tiny_demo, tiny_encoded):
    """The training pass's phrasing NLL (``_rest_view``, on a batch) and the light holdout
    measurement's (``phrasing_examples``, scored one by one) are the same tokens; an
    answer that is all facts has none."""
    from core.data.encoding import collate
    from core.evaluation.scoring import score_sequences
    from core.models.loading import load_model
    from core.training.loop import _rest_view

    tokenizer, forget, _ = tiny_encoded
    sets = [read_records(tiny_demo.data[name]) for name in ("forget10", "retain90", "holdout")]
    focus = FactFocus.of(r.answer for s in sets for r in s.records)
    examples = forget[:16]
    focused = focus.examples(tokenizer, sets[0].records, examples)
    # one answer with no rare word: its facts are the whole answer, no phrasing is left
    focused[0] = examples[0]
    rest = phrasing_examples(examples, focused)
    assert rest[0] is None and all(r is not None for r in rest[1:])
    model, _ = load_model(str(tiny_demo.target), dtype="fp32")
    model.eval()
    batch = collate(
        [replace(e, fact_labels=list(f.labels)) for e, f in zip(examples, focused)],
        tokenizer.pad_token_id,
    )
    keep = torch.ones(len(examples), dtype=torch.bool)
    denominators = {"rest": {"sequence": len(examples), "token": 1}}
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        view = _rest_view(logits, batch, None, False, denominators, keep)
        scored = score_sequences(model, rest[1:], pad_token_id=tokenizer.pad_token_id, batch_size=8)
    per_token, rows = view[3], view[6]
    assert per_token[0] is None and rows.tolist() == [False] + [True] * (len(examples) - 1)
    assert per_token[1:] == pytest.approx([s.nll / s.n_tokens for s in scored], rel=1e-4)


def test_both_is_offered_where_the_forget_term_needs_nothing_but_the_answers():
    spec = {
        "model": "demo-target",
        "forget": "ds_demo_forget10",
        "retain": "ds_demo_retain90",
        "hyperparameters": {"forget_tokens": "both"},
    }
    for method in ("simnpo", "graddiff", "ga", "loku"):
        parsed = parse_job_spec({**spec, "method": method}).method_hyperparameters()
        assert parsed.forget_tokens == "both"
    for method in ("npo", "flat"):  # a reference model's likelihood, a template answer
        with pytest.raises(InvalidRequest) as refused:
            parse_job_spec({**spec, "method": method}).method_hyperparameters()
        assert refused.value.param == "hyperparameters.forget_tokens"


def test_a_job_with_both_matches_phrasing_and_facts_each_to_the_holdouts_own(tiny_demo, tmp_path):
    from core.pipeline import run_job
    from core.training.state import TrainingState

    spec, inputs = demo_job(
        tiny_demo,
        hyperparameters={"forget_tokens": "both", "match_holdout": True},
        target={"max_epochs": 2},
    )
    recorder = recording_reporter()
    run_job(spec, inputs, tmp_path / "job", reporter=recorder)
    told = [m for _, m, _ in recorder.events if "two forget terms" in m]
    assert told, [m for _, m, _ in recorder.events]
    for point in recorder.points:
        figures = point["metrics"]
        for part in ("rest", "facts"):
            assert 0 <= figures[f"{part}_membership_auc"] <= 1
            assert 0 <= figures[f"{part}_matched"] <= 1
        assert figures["forget_matched"] <= min(figures["rest_matched"], figures["facts_matched"])
    state = TrainingState.load(tmp_path / "job" / "run" / "state")
    ceilings = state.extra["monitor"]["ceilings"]
    assert all(len(pair) == 2 for pair in ceilings)
    # the facts are matched to the holdout's facts, the phrasing to its phrasing
    assert any(pair[0] != pair[1] for pair in ceilings)
