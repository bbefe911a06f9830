"""Per-sample statistics of a model on a list of records (torch side of evaluation).

Everything runs under ``torch.inference_mode()`` in length-sorted batches, so that
padding stays small: one forward pass scores the answer, the paraphrased answer and
the perturbed answers of many questions at once, and one ``generate`` call answers a
batch of left-padded prompts. Answer-token NLLs come from :mod:`core.models.scoring`,
the one place the project computes them. The numbers are turned into metrics by the
pure functions of :mod:`core.evaluation.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from core.data.encoding import (
    EncodedExample,
    collate,
    collate_prompts,
    encode_qa_many,
    encode_text,
)
from core.data.records import Record
from core.evaluation import metrics
from core.models.scoring import sequence_nll, token_logprobs


@dataclass
class SequenceScore:
    """What one forward pass tells about one sequence's answer tokens."""

    nll: float
    n_tokens: int
    #: the following are filled only for sequences scored with ``details=True``
    token_logprobs: np.ndarray | None = None  # log p(y_t | y_<t, x), [n_tokens]
    mean_logprobs: np.ndarray | None = None  # mu_t = sum_v p_v log p_v
    std_logprobs: np.ndarray | None = None  # sigma_t, std of log p under p
    predicted_ids: np.ndarray | None = None  # teacher-forced argmax
    answer_ids: np.ndarray | None = None


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (so an
    out-of-memory shows up on the first batch, not the last)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def pad_token_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token")
    return pad


@torch.inference_mode()
def score_sequences(
    model,
    examples: Sequence[EncodedExample],
    *,
    pad_token_id: int,
    batch_size: int,
    details: Sequence[bool] | bool = False,
) -> list[SequenceScore]:
    """Answer NLL and length of every example; with ``details`` also the per-token
    statistics that Min-K%, Min-K%++, extraction strength and exact memorization need."""
    if isinstance(details, bool):
        details = [details] * len(examples)
    device = _device(model)
    results: list[SequenceScore | None] = [None] * len(examples)
    for batch_indices in _batches([len(e.input_ids) for e in examples], batch_size):
        batch = collate([examples[i] for i in batch_indices], pad_token_id)
        batch = {key: value.to(device) for key, value in batch.items()}
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).logits
        nll, n_tokens = sequence_nll(logits, batch["labels"])
        nll, n_tokens = nll.cpu().numpy(), n_tokens.cpu().numpy()
        for row, index in enumerate(batch_indices):
            results[index] = SequenceScore(nll=float(nll[row]), n_tokens=int(n_tokens[row]))

        want = torch.tensor([details[i] for i in batch_indices], device=device)
        if not bool(want.any()):
            continue
        logprobs, mask = token_logprobs(logits, batch["labels"])
        selected = mask & want[:, None]
        # Only answer positions of the rows that need them: [positions, vocab].
        position_logits = logits[:, :-1, :][selected].float()
        position_logprobs = torch.log_softmax(position_logits, dim=-1)
        position_probs = position_logprobs.exp()
        # Min-K%++ moments of log p under the model's own next-token distribution:
        # mu = sum p log p, sigma^2 = sum p (log p)^2 - mu^2 (float32).
        mu = (position_probs * position_logprobs).sum(-1)
        second = (position_probs * position_logprobs.square()).sum(-1)
        sigma = (second - mu.square()).clamp_min(0).sqrt()
        predicted = position_logits.argmax(-1)
        targets = batch["labels"][:, 1:][selected]
        counts = selected.sum(1).tolist()
        pieces = [
            torch.split(t.cpu(), counts)
            for t in (logprobs[selected], mu, sigma, predicted, targets)
        ]
        for row, index in enumerate(batch_indices):
            if not details[index]:
                continue
            score = results[index]
            score.token_logprobs = pieces[0][row].double().numpy()
            score.mean_logprobs = pieces[1][row].double().numpy()
            score.std_logprobs = pieces[2][row].double().numpy()
            score.predicted_ids = pieces[3][row].numpy()
            score.answer_ids = pieces[4][row].numpy()
    return results


@torch.inference_mode()
def generate_greedy(
    model,
    prompts: Sequence[list[int]],
    *,
    pad_token_id: int,
    eos_token_id: int | None,
    max_new_tokens: int,
    batch_size: int,
) -> list[list[int]]:
    """Greedy continuations (new tokens only, cut before the first EOS) of left-padded
    prompt batches; equal to generating one prompt at a time."""
    from transformers import GenerationConfig

    # An explicit config: a checkpoint's own generation_config (sampling, repetition
    # penalty) must not change what "greedy" means in a report.
    config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
    )
    device = _device(model)
    outputs: list[list[int] | None] = [None] * len(prompts)
    for batch_indices in _batches([len(p) for p in prompts], batch_size):
        batch = collate_prompts([prompts[i] for i in batch_indices], pad_token_id)
        batch = {key: value.to(device) for key, value in batch.items()}
        generated = model.generate(**batch, generation_config=config)
        new_tokens = generated[:, batch["input_ids"].shape[1] :].cpu().tolist()
        for row, index in enumerate(batch_indices):
            tokens = new_tokens[row]
            if eos_token_id is not None and eos_token_id in tokens:
                tokens = tokens[: tokens.index(eos_token_id)]
            outputs[index] = tokens
    return outputs


def _decode(tokenizer, ids) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True).strip()


def _mia_columns(
    scores: Sequence[SequenceScore], texts: Sequence[str], min_k: float
) -> dict[str, list[float]]:
    columns = {f"mia_{attack}": [] for attack in metrics.MIA_ATTACKS}
    for score, text in zip(scores, texts):
        avg_nll = score.nll / score.n_tokens
        columns["mia_loss"].append(metrics.loss_score(avg_nll))
        columns["mia_zlib"].append(metrics.zlib_score(avg_nll, text))
        columns["mia_min_k"].append(metrics.min_k_score(score.token_logprobs, min_k))
        columns["mia_min_k_plus_plus"].append(
            metrics.min_k_plus_plus_score(
                score.token_logprobs, score.mean_logprobs, score.std_logprobs, min_k
            )
        )
    return columns


def _likelihood_columns(
    tokenizer, scores: Sequence[SequenceScore], min_k: float
) -> dict[str, list]:
    """Columns every set gets from its main sequences: NLL, probability, teacher-forced
    memorization and membership-inference scores."""
    columns: dict[str, list] = {
        "n_tokens": [s.n_tokens for s in scores],
        "nll": [s.nll for s in scores],
        "probability": metrics.normalized_probability(
            [s.nll for s in scores], [s.n_tokens for s in scores]
        ).tolist(),
        "extraction_strength": [
            metrics.extraction_strength(s.predicted_ids, s.answer_ids) for s in scores
        ],
        "exact_memorization": [
            metrics.exact_memorization(s.predicted_ids, s.answer_ids) for s in scores
        ],
    }
    # zlib compresses the text the loss was computed on: the (possibly truncated) answer.
    texts = [_decode(tokenizer, s.answer_ids) for s in scores]
    columns.update(_mia_columns(scores, texts, min_k))
    return columns


def score_qa_records(
    model,
    tokenizer,
    records: Sequence[Record],
    *,
    template: str,
    max_length: int,
    batch_size: int,
    truth_ratio: bool,
    generate: bool,
    max_new_tokens: int,
    knowmem_max_new_tokens: int,
    min_k: float = metrics.DEFAULT_MIN_K_FRACTION,
) -> dict[str, list]:
    """Per-sample columns for question/answer (or prompt/completion) records.

    With ``truth_ratio`` the paraphrased and every perturbed answer are scored in the
    same batches as the answers (1 + 1 + P sequences per question). With ``generate``
    each prompt is answered greedily and scored with ROUGE-L against the answer:
    recall (TOFU) over ``max_new_tokens`` tokens, and F1 over the first
    ``knowmem_max_new_tokens`` (MUSE KnowMem; a greedy continuation's prefix is the
    shorter greedy continuation, so one generation serves both).
    """
    pairs = []
    for i, record in enumerate(records):
        answers = [record.answer]
        if truth_ratio:
            answers += [record.paraphrased_answer, *record.perturbed_answers]
        pairs.extend((record.prompt or "", answer, i) for answer in answers)
    examples = encode_qa_many(tokenizer, pairs, max_length=max_length, template=template)
    # The record's own answer is the first sequence of each record's group.
    group_start = np.cumsum(
        [0] + [1 + (1 + len(r.perturbed_answers) if truth_ratio else 0) for r in records]
    )[:-1]
    is_answer = np.zeros(len(examples), dtype=bool)
    is_answer[group_start] = True
    scores = score_sequences(
        model,
        examples,
        pad_token_id=pad_token_id(tokenizer),
        batch_size=batch_size,
        details=is_answer.tolist(),
    )
    answer_scores = [scores[i] for i in group_start]
    columns = _likelihood_columns(tokenizer, answer_scores, min_k)

    if truth_ratio:
        ratios = []
        for start, record in zip(group_start, records):
            paraphrased = scores[start + 1]
            perturbed = scores[start + 2 : start + 2 + len(record.perturbed_answers)]
            ratios.append(
                metrics.truth_ratio(
                    [[s.nll / s.n_tokens for s in perturbed]],
                    [paraphrased.nll / paraphrased.n_tokens],
                )[0]
            )
        columns["truth_ratio"] = [float(r) for r in ratios]

    if generate:
        prompts = [examples[i].prompt_ids for i in group_start]
        generations = generate_greedy(
            model,
            prompts,
            pad_token_id=pad_token_id(tokenizer),
            eos_token_id=tokenizer.eos_token_id,
            max_new_tokens=max(max_new_tokens, knowmem_max_new_tokens),
            batch_size=batch_size,
        )
        columns["generation"] = []
        columns["rouge_recall"] = []
        columns["rouge_f1"] = []
        columns["knowmem_f1"] = []
        for tokens, record in zip(generations, records):
            text = _decode(tokenizer, tokens[:max_new_tokens])
            recall, f1 = metrics.rouge_l(text, record.answer)
            columns["generation"].append(text)
            columns["rouge_recall"].append(recall)
            columns["rouge_f1"].append(f1)
            short = _decode(tokenizer, tokens[:knowmem_max_new_tokens])
            if short != text:
                f1 = metrics.rouge_l(short, record.answer)[1]
            columns["knowmem_f1"].append(f1)
    return columns


def score_text_records(
    model,
    tokenizer,
    records: Sequence[Record],
    *,
    max_length: int,
    batch_size: int,
    verbmem: bool,
    prefix_tokens: int,
    max_new_tokens: int,
    min_k: float = metrics.DEFAULT_MIN_K_FRACTION,
) -> dict[str, list]:
    """Per-sample columns for raw texts (MUSE-style). Likelihood statistics use each
    text's first ``max_length`` window. With ``verbmem`` the first ``prefix_tokens``
    tokens are continued greedily for up to ``max_new_tokens`` and compared (ROUGE-L
    F1) with the true continuation of the same length; texts with nothing after the
    prefix get ``None``."""
    examples = [
        encode_text(tokenizer, record.answer, max_length=max_length, record_index=i)[0]
        for i, record in enumerate(records)
    ]
    scores = score_sequences(
        model, examples, pad_token_id=pad_token_id(tokenizer), batch_size=batch_size, details=True
    )
    columns = _likelihood_columns(tokenizer, scores, min_k)
    if not verbmem:
        return columns

    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompts, references, which = [], [], []
    for i, record in enumerate(records):
        ids = tokenizer(record.answer, add_special_tokens=False)["input_ids"]
        continuation = ids[prefix_tokens : prefix_tokens + max_new_tokens]
        if not continuation:
            continue
        prompts.append(bos + ids[:prefix_tokens])
        references.append(_decode(tokenizer, continuation))
        which.append(i)
    columns["verbmem_f1"] = [None] * len(records)
    columns["verbmem_generation"] = [None] * len(records)
    if prompts:
        generations = generate_greedy(
            model,
            prompts,
            pad_token_id=pad_token_id(tokenizer),
            eos_token_id=tokenizer.eos_token_id,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
        for i, tokens, reference in zip(which, generations, references):
            text = _decode(tokenizer, tokens)
            columns["verbmem_generation"][i] = text
            columns["verbmem_f1"][i] = metrics.rouge_l(text, reference)[1]
    return columns
