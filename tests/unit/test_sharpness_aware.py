"""Sharpness-aware unlearning (``hyperparameters.sam_rho``): the forget loss's gradient
is taken at the weights moved up it by rho along its normalized gradient. Checked by
hand: the move itself, and one training step against an autograd computation of the
gradient at the moved weights."""

from __future__ import annotations

import pytest
import torch

from core.data.encoding import collate, encode_record_set
from core.data.records import read_records
from core.methods import get_method
from core.models.scoring import sequence_nll
from core.spec import DEFAULT_PROMPT_TEMPLATE
from core.training.loop import block_passes, run_training, sam_perturb, sam_restore


def test_the_move_is_rho_along_the_normalized_gradient_and_is_undone():
    a = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    b = torch.nn.Parameter(torch.tensor([5.0]))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])  # norm 5
    moves = sam_perturb([a, b], rho=0.5)
    assert a.detach().tolist() == pytest.approx([1.3, 2.0])
    assert b.detach().tolist() == pytest.approx([5.4])
    sam_restore(moves)
    assert a.detach().tolist() == [1.0, 2.0] and b.detach().tolist() == [5.0]


def test_the_adaptive_move_is_relative_to_each_weights_size():
    # ASAM by hand: T = |w| + 0.01 = (1.01, 2.01 | 5.01); T*g = (3.03, 0 | 20.04),
    # ||T*g|| = sqrt(3.03^2 + 20.04^2) = sqrt(410.7825) = 20.26777; the move is
    # rho * T^2 * g / ||T*g||: 0.5 * 1.0201 * 3 / 20.26777 = 0.0754967 for a[0],
    # 0.5 * 25.1001 * 4 / 20.26777 = 2.4768487 for b (the larger weight moves further).
    a = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    b = torch.nn.Parameter(torch.tensor([5.0]))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    moves = sam_perturb([a, b], rho=0.5, adaptive=True)
    assert a.detach().tolist() == pytest.approx([1.0754967, 2.0], abs=1e-6)
    assert b.detach().tolist() == pytest.approx([7.4768487], abs=1e-6)
    sam_restore(moves)
    assert a.detach().tolist() == [1.0, 2.0] and b.detach().tolist() == [5.0]


def test_a_zero_gradient_moves_nothing():
    a = torch.nn.Parameter(torch.tensor([1.0]))
    a.grad = torch.zeros(1)
    assert sam_perturb([a], rho=0.5) == [] and a.item() == 1.0


def test_passes_per_step():
    assert block_passes(False, True) == [("push", True, True)]
    # forget at the weights (recorded), forget at the moved weights, retain at the weights
    assert block_passes(True, True) == [
        ("push", False, True),
        ("push", False, False),
        ("off", True, True),
    ]
    assert block_passes(True, False) == [("push", False, True), ("push", False, False)]
    # with ceilings (match_holdout): every answer at both, then the answers at their
    # ceilings subtracted at the weights, with the retain term when there is one
    assert block_passes(True, True, ceilings=True) == [
        ("all", False, True),
        ("all", False, False),
        ("settle", True, True),
    ]
    assert block_passes(True, False, ceilings=True)[-1] == ("settle", False, True)


def test_one_step_follows_the_gradient_at_the_moved_weights(tiny_demo):
    from core.models.loading import load_model

    model, tokenizer = load_model(str(tiny_demo.target), dtype="fp32")
    example = encode_record_set(
        tokenizer,
        read_records(tiny_demo.data["forget10"]),
        max_length=64,
        template=DEFAULT_PROMPT_TEMPLATE,
    )[:1]
    rho, lr = 0.5, 1e-3
    before = [p.detach().clone() for p in model.parameters()]

    # By hand: gradient ascent's loss is a positive multiple of -NLL for one example,
    # and AdamW's first step (no decay) moves each weight by -lr * g / (|g| + 1e-8),
    # whatever that multiple is.
    def gradient() -> list[torch.Tensor]:
        model.zero_grad()
        batch = collate(example, tokenizer.pad_token_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        nll, _ = sequence_nll(logits, batch["labels"])
        (-nll.sum()).backward()
        return [p.grad.detach().clone() for p in model.parameters()]

    plain = gradient()
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in plain]))
    with torch.no_grad():
        for p, g in zip(model.parameters(), plain):
            p.add_(g * rho / norm)
    moved = gradient()
    with torch.no_grad():
        for p, original in zip(model.parameters(), before):
            p.copy_(original)
    model.zero_grad()

    method = get_method("ga")
    hparams = _one_plain_step(method, lr, rho, batch_size=1)
    result = run_training(model, tokenizer, example, None, method, hparams, seed=0)
    assert result.steps == 1

    flipped = 0
    for p, original, g_plain, g_moved in zip(result.model.parameters(), before, plain, moved):
        clear = g_moved.abs() > 1e-3  # where eps does not matter, whatever the multiple
        step = (p.detach() - original)[clear]
        assert step.tolist() == pytest.approx((-lr * torch.sign(g_moved[clear])).tolist(), abs=2e-6)
        flipped += int((torch.sign(g_moved[clear]) != torch.sign(g_plain[clear])).sum())
    assert flipped > 0, "rho too small to tell the moved gradient from the plain one"


def test_an_answer_at_its_ceiling_keeps_only_its_sharpness(tiny_demo):
    """match_holdout with sam_rho: of two answers, the first is at its ceiling. The step's
    gradient is both answers' at the moved weights (moved along both's gradient) minus
    the first's at the weights themselves: L0(w + e) - L0(w) + L1(w + e)."""
    from core.models.loading import load_model
    from core.training.loop import Callbacks

    model, tokenizer = load_model(str(tiny_demo.target), dtype="fp32")
    examples = encode_record_set(
        tokenizer,
        read_records(tiny_demo.data["forget10"]),
        max_length=64,
        template=DEFAULT_PROMPT_TEMPLATE,
    )[:2]
    rho, lr = 0.5, 1e-3
    before = [p.detach().clone() for p in model.parameters()]

    def gradient(which) -> list[torch.Tensor]:
        # GA's loss is -(sum of answer NLLs) / (answer tokens): the same positive
        # multiple for every part below, which AdamW's first step (the sign) ignores.
        model.zero_grad()
        for example in (examples[i] for i in which):
            batch = collate([example], tokenizer.pad_token_id)
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
            nll, _ = sequence_nll(logits, batch["labels"])
            (-nll.sum()).backward()
        return [p.grad.detach().clone() for p in model.parameters()]

    both = gradient([0, 1])
    at_ceiling = gradient([0])
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in both]))
    with torch.no_grad():
        for p, g in zip(model.parameters(), both):
            p.add_(g * rho / norm)
    moved = gradient([0, 1])
    with torch.no_grad():
        for p, original in zip(model.parameters(), before):
            p.copy_(original)
    model.zero_grad()
    expected = [m - c for m, c in zip(moved, at_ceiling)]

    method = get_method("ga")
    hparams = _one_plain_step(method, lr, rho, batch_size=2, match_holdout=True)
    callbacks = Callbacks(forget_ceilings=lambda: [float("-inf"), None])
    result = run_training(
        model, tokenizer, examples, None, method, hparams, seed=0, callbacks=callbacks
    )
    assert result.steps == 1

    differs = 0
    for p, original, g, g_moved in zip(result.model.parameters(), before, expected, moved):
        clear = g.abs() > 1e-3
        step = (p.detach() - original)[clear]
        assert step.tolist() == pytest.approx((-lr * torch.sign(g[clear])).tolist(), abs=2e-6)
        differs += int((torch.sign(g[clear]) != torch.sign(g_moved[clear])).sum())
    assert differs > 0, "the subtracted gradient changed no weight's direction"


def _one_plain_step(method, lr: float, rho: float, **more):
    """One step whose AdamW update is ``-lr * sign(g)``: no warmup, decay or clipping."""
    return method.parse_hyperparameters(
        {
            "learning_rate": lr,
            "epochs": 1,
            "gradient_accumulation_steps": 1,
            "warmup_ratio": 0.0,
            "lr_scheduler": "constant",
            "weight_decay": 0.0,
            "max_grad_norm": None,
            "precision": "fp32",
            "sam_rho": rho,
            **more,
        }
    )
