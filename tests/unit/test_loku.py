"""LoKU's inverted hinge loss against hand-computed values, and the method end to end."""

from __future__ import annotations

import math

import pytest
import torch

from core.data.encoding import IGNORE_INDEX
from core.methods import get_method
from core.methods.base import ForgetInputs
from core.methods.loku import forget_term, inverted_hinge_loss


def _logits(*distributions):
    """Logits ``[1, T, V]`` whose softmax is each given distribution."""
    return torch.tensor([[[math.log(p) for p in d] for d in distributions]])


# True token (index 0) top-1, top-2, and overtaken by far:
#   1 + 0.7 - 0.2 = 1.5,   1 + 0.3 - 0.6 = 0.7,   1 + 0.05 - 0.9 = 0.15
TOP1, TOP2, OVERTAKEN = (0.7, 0.2, 0.1), (0.3, 0.6, 0.1), (0.05, 0.9, 0.05)


@pytest.mark.parametrize("distribution,expected", [(TOP1, 1.5), (TOP2, 0.7), (OVERTAKEN, 0.15)])
def test_ihl_per_token(distribution, expected):
    loss = inverted_hinge_loss(_logits(distribution), torch.tensor([[0]]))
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_ihl_is_the_mean_over_answer_tokens_and_ignores_minus_100():
    logits = _logits(TOP1, (0.01, 0.01, 0.98), TOP2, OVERTAKEN)
    labels = torch.tensor([[0, IGNORE_INDEX, 0, 0]])
    assert inverted_hinge_loss(logits, labels).item() == pytest.approx(
        (1.5 + 0.7 + 0.15) / 3, abs=1e-6
    )


def test_ihl_gradient_when_overtaken_is_small_but_not_zero():
    """d/dz_j (p_y - p_m) = p_y (d_jy - p_j) - p_m (d_jm - p_j); with p = (0.05, 0.9, 0.05),
    y = 0, m = 1: (0.0925, -0.135, 0.0425). The published hinge never clips
    (1 + p_y - p_m >= p_y > 0), so the gradient is not zero once the true token has been
    overtaken: it only shrinks (compare the top-1 case)."""
    logits = _logits(OVERTAKEN).requires_grad_(True)
    inverted_hinge_loss(logits, torch.tensor([[0]])).backward()
    assert logits.grad[0, 0].tolist() == pytest.approx([0.0925, -0.135, 0.0425], abs=1e-6)

    # top-1, p = (0.7, 0.2, 0.1), m = 1: (0.7*0.3 + 0.2*0.7, -0.7*0.2 - 0.2*0.8,
    # -0.7*0.1 + 0.2*0.1) = (0.35, -0.30, -0.05)
    top1 = _logits(TOP1).requires_grad_(True)
    inverted_hinge_loss(top1, torch.tensor([[0]])).backward()
    assert top1.grad[0, 0].tolist() == pytest.approx([0.35, -0.30, -0.05], abs=1e-6)
    assert logits.grad.abs().sum() < top1.grad.abs().sum()


def test_forget_term_shifts_causal_logits_onto_the_next_label():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4, 1], [IGNORE_INDEX, 2, 2, 6, 0]])
    term = forget_term(ForgetInputs(nll=None, n_tokens=None, logits=logits, labels=labels), None)
    expected = inverted_hinge_loss(logits[:, :-1], labels[:, 1:])
    assert term.mean().item() == pytest.approx(expected.item(), rel=1e-6)
    assert term.n_tokens.tolist() == [3, 4]


def test_registry_entry_and_paper_defaults():
    loku = get_method("loku").parse_hyperparameters({})
    assert (loku.epochs, loku.retain_loss, loku.retain_coeff, loku.forget_coeff) == (
        5,
        "nll",
        1.0,
        1.0,
    )
