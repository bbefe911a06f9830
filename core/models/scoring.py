"""Per-sequence likelihoods from logits: the one place where answer-token NLLs are
computed, for training losses and evaluation metrics alike."""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.data.encoding import IGNORE_INDEX

if TYPE_CHECKING:
    import torch


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next token and the mask of answer positions.

    Returns ``(logprobs [B, T-1], mask [B, T-1])``; masked positions hold 0. Computed in
    float32 whatever the model's dtype, since bf16 sums of hundreds of tokens drift.
    """
    import torch
    import torch.nn.functional as F

    shifted_logits = logits[:, :-1, :].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    nll = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.size(-1)),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(targets)
    return torch.where(mask, -nll, torch.zeros_like(nll)), mask


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(nll [B], n_tokens [B])``: summed answer-token NLL and answer length per sequence."""
    logprobs, mask = token_logprobs(logits, labels)
    return -logprobs.sum(dim=1), mask.sum(dim=1)
