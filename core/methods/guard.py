"""GUARD: generation-time unlearning (arXiv 2505.13312). The weights stay as they are;
what a deletion request names is kept out of the *output*.

A guard is an artifact, not a checkpoint: a folder with ``guard.json`` (the forbidden
spans, the classifier's threshold and held-out precision/recall, the base model it
was built on) and ``classifier.safetensors``. It is built from the frozen model and
the forget and retain sets (:func:`build_guard`) and applied at decoding time by
:class:`GuardProcessor`, so it is not a training method and is not in
``core.methods.METHODS``.

**Classifier.** A small MLP on the frozen model's penultimate hidden states, mean-pooled
over the prompt's tokens, trained to tell forget prompts (1) from retain prompts (0)
with class-balanced binary cross-entropy. It says whether a prompt asks about what was
forgotten.

**Forbidden spans** (the documented rule). From each forget answer: every maximal run
of capitalised words (entity names: people, places, titles) and every number (years,
values), less the words that start sentences on their own (``The``, ``He``) and less
any span that also occurs in a retain answer (what the model must still say).

**Decoding** (``GuardProcessor``, a logits processor over the generated tokens):

- exact, always: once the output has produced the first ``m >= 1`` tokens of a span,
  the token that would complete its next piece is blocked;
- for prompts the classifier flags: the first token of every span is blocked as well,
  and so are the answers' **values** (the words of each forget answer its question does
  not already say, less function words: ``satire``, ``pilot``), and every token whose
  input embedding (the base model's own) has cosine similarity above
  ``semantic_threshold`` with one of those first tokens (near-duplicates: other
  casings, spellings, the same name's pieces). Values are blocked for flagged prompts
  only, since retain answers may say them too.

Blocking sets a logit to ``-inf``, so greedy decoding takes the best continuation that
is not forbidden. This replaces the paper's beam search over span-free continuations
with one step of look-ahead per token (the documented cheaper equivalent): a blocked
span cannot be completed, at no extra forward passes.

Guards compose: ``GuardProcessor.combine`` merges several deletion requests' guards on
one base model (a prompt is flagged if any classifier flags it).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.methods.guard_spec import GUARD_METHOD, GuardHyperparameters

__all__ = ["GUARD_METHOD", "GuardHyperparameters"]

GUARD_FILE = "guard.json"
CLASSIFIER_FILE = "classifier.safetensors"
FORMAT = "obliviate-guard/1"

#: capitalised words that begin sentences rather than name things
SENTENCE_WORDS = frozenset(
    "The A An He She It They His Her Its Their This That These Those In On At Of For "
    "And But Or As By From With To Yes No I We You".split()
)
WORD = re.compile(r"\w[\w'-]*")
#: words that carry no fact, never blocked as values
FUNCTION_WORDS = frozenset(
    "a an the of in on at to for from by with and or but as is was were are be been has "
    "had have did does do who whom whose which what when where why how it its he she they "
    "his her their this that these those not no yes".split()
)
ENTITY = re.compile(r"[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*|\d[\d,.:/-]*\d|\d")


def extract_spans(forget_answers: Sequence[str], retain_answers: Sequence[str]) -> list[str]:
    """The forbidden spans of the forget answers (the rule in the module docstring)."""
    retain_text = "\n".join(retain_answers)
    spans: set[str] = set()
    for answer in forget_answers:
        for match in ENTITY.finditer(answer):
            words = match.group().split()
            while words and words[0] in SENTENCE_WORDS:
                words = words[1:]
            span = " ".join(words).rstrip(".,:")
            if span and not re.search(rf"(?<!\w){re.escape(span)}(?!\w)", retain_text):
                spans.add(span)
    return sorted(spans)


def extract_values(forget_pairs: Sequence[tuple[str, str]], spans: Sequence[str]) -> list[str]:
    """The forget answers' values, blocked for flagged prompts only: the words of each
    answer that its question does not already say, other than function words and the
    spans' own words (``satire``, ``pilot``: what the answer tells)."""
    span_words = {word for span in spans for word in span.split()}
    values: set[str] = set()
    for question, answer in forget_pairs:
        asked = {word.lower() for word in WORD.findall(question)}
        for word in WORD.findall(answer):
            lower = word.lower()
            if lower not in asked and lower not in FUNCTION_WORDS and word not in span_words:
                values.add(word)
    return sorted(values)


def span_token_ids(tokenizer, spans: Sequence[str]) -> list[list[int]]:
    """Each span as tokens, both as it starts a text and after a space (BPE and
    sentencepiece split the two differently)."""
    forms: set[tuple[int, ...]] = set()
    for span in spans:
        for text in (span, " " + span):
            ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
            if ids:
                forms.add(ids)
    return [list(ids) for ids in sorted(forms)]


class PromptClassifier(torch.nn.Module):
    def __init__(self, width: int, hidden_size: int):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(width, hidden_size), torch.nn.ReLU(), torch.nn.Linear(hidden_size, 1)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)


@torch.inference_mode()
def prompt_features(model, prompts: Sequence[list[int]]) -> torch.Tensor:
    """The penultimate layer's hidden states, mean over each prompt's tokens."""
    device = next(model.parameters()).device
    rows = []
    for ids in prompts:
        output = model(input_ids=torch.tensor([ids], device=device), output_hidden_states=True)
        rows.append(output.hidden_states[-2][0].float().mean(0).cpu())
    return torch.stack(rows)


def train_classifier(
    features: torch.Tensor, labels: torch.Tensor, hp: GuardHyperparameters
) -> PromptClassifier:
    torch.manual_seed(hp.seed)
    classifier = PromptClassifier(features.shape[1], hp.hidden_size)
    positives = labels.sum().clamp(min=1)
    pos_weight = (len(labels) - positives) / positives
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=hp.learning_rate)
    mean, std = features.mean(0), features.std(0).clamp(min=1e-6)
    classifier.register_buffer("mean", mean)
    classifier.register_buffer("std", std)
    scaled = (features - mean) / std
    for _ in range(hp.epochs):
        optimizer.zero_grad()
        loss_fn(classifier(scaled), labels.float()).backward()
        optimizer.step()
    return classifier.eval()


def classify(classifier: PromptClassifier, features: torch.Tensor) -> torch.Tensor:
    """Scores in (0, 1): how much each prompt looks like a forget prompt."""
    with torch.no_grad():
        return torch.sigmoid(classifier((features - classifier.mean) / classifier.std))


def precision_recall(flags: torch.Tensor, labels: torch.Tensor) -> dict:
    true_positives = int((flags & labels.bool()).sum())
    flagged, positives = int(flags.sum()), int(labels.sum())
    return {
        "precision": true_positives / flagged if flagged else None,
        "recall": true_positives / positives if positives else None,
        "forget_prompts": positives,
        "retain_prompts": len(labels) - positives,
    }


@dataclass
class Guard:
    """A loaded guard: what GuardProcessor needs, plus its description."""

    info: dict
    classifier: PromptClassifier
    spans: list[list[int]]
    #: the values' tokens, blocked for flagged prompts only
    values: list[list[int]] = field(default_factory=list)

    @property
    def threshold(self) -> float:
        return self.info["threshold"]

    def flags(self, model, prompt_ids: list[int]) -> bool:
        score = classify(self.classifier, prompt_features(model, [prompt_ids]))[0]
        return bool(score > self.threshold)


def build_guard(
    model,
    tokenizer,
    forget_prompts: Sequence[list[int]],
    retain_prompts: Sequence[list[int]],
    forget_answers: Sequence[str],
    retain_answers: Sequence[str],
    *,
    base_model: str,
    hp: GuardHyperparameters | None = None,
    forget_questions: Sequence[str] = (),
) -> Guard:
    """Train the classifier (with a held-out split for its precision and recall) and
    extract the spans."""
    hp = hp or GuardHyperparameters()
    prompts = [*forget_prompts, *retain_prompts]
    labels = torch.tensor([1] * len(forget_prompts) + [0] * len(retain_prompts))
    features = prompt_features(model, prompts)
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(hp.seed))
    held = order[: int(len(prompts) * hp.holdout_fraction)]
    train = order[len(held) :]
    classifier = train_classifier(features[train], labels[train], hp)
    scores = {}
    if len(held):
        flags = classify(classifier, features[held]) > hp.threshold
        scores = precision_recall(flags, labels[held])
    spans = extract_spans(forget_answers, retain_answers)
    values = extract_values(list(zip(forget_questions, forget_answers)), spans)
    info = {
        "format": FORMAT,
        "base_model": base_model,
        "vocab_size": len(tokenizer),
        "vocab_sha256": vocab_digest(tokenizer),
        "spans": spans,
        "values": values,
        "threshold": hp.threshold,
        "semantic_threshold": hp.semantic_threshold,
        "classifier": {
            "layer": "penultimate",
            "pooling": "mean",
            "width": features.shape[1],
            "hidden_size": hp.hidden_size,
        },
        "holdout": scores,
        "hyperparameters": hp.model_dump(),
    }
    return Guard(
        info, classifier, span_token_ids(tokenizer, spans), span_token_ids(tokenizer, values)
    )


def vocab_digest(tokenizer) -> str:
    """What tells two tokenizers apart: a guard's spans are token ids of its base's."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()


def save_guard(guard: Guard, folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in guard.classifier.state_dict().items()},
        str(folder / CLASSIFIER_FILE),
    )
    (folder / GUARD_FILE).write_text(json.dumps(guard.info, indent=2))


def is_guard_folder(folder: str | Path) -> bool:
    return (Path(folder) / GUARD_FILE).is_file()


def load_guard(folder: str | Path, tokenizer) -> Guard:
    from safetensors.torch import load_file

    folder = Path(folder)
    info = json.loads((folder / GUARD_FILE).read_text())
    shape = info["classifier"]
    classifier = PromptClassifier(shape["width"], shape["hidden_size"])
    state = load_file(str(folder / CLASSIFIER_FILE))
    classifier.register_buffer("mean", state["mean"])
    classifier.register_buffer("std", state["std"])
    classifier.load_state_dict(state)
    return Guard(
        info,
        classifier.eval(),
        span_token_ids(tokenizer, info["spans"]),
        span_token_ids(tokenizer, info.get("values", [])),
    )


def incompatibility(guard: Guard, tokenizer, base_model: str) -> str | None:
    """Why ``guard`` cannot run on this model, or None: its spans and classifier are
    in its base model's tokens and hidden states."""
    if guard.info.get("vocab_sha256") != vocab_digest(tokenizer):
        return f"it was built on {guard.info.get('base_model')!r}, whose tokenizer differs"
    if guard.info.get("base_model") != base_model:
        return f"it was built on {guard.info.get('base_model')!r}, not {base_model!r}"
    return None


class GuardProcessor:
    """Blocks forbidden continuations: ``processor(generated_ids, logits) -> logits``."""

    def __init__(self, spans: list[list[int]], banned_first: set[int]):
        self.spans = spans
        self.banned_first = banned_first

    @classmethod
    def combine(cls, guards: Sequence[Guard], model, prompt_ids: list[int]) -> GuardProcessor:
        """One processor for several guards on one prompt: exact spans of all of them,
        and the flagged ones' first and semantically near tokens."""
        spans = [span for guard in guards for span in guard.spans]
        banned: set[int] = set()
        for guard in guards:
            if guard.flags(model, prompt_ids):
                spans += guard.values
                flagged = {span[0] for span in guard.spans + guard.values}
                banned |= flagged | similar_tokens(model, flagged, guard.info["semantic_threshold"])
        return cls(spans, banned)

    def __call__(self, generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        blocked = set(self.banned_first)
        for span in self.spans:
            for m in range(min(len(span) - 1, len(generated)), 0, -1):
                if generated[-m:] == span[:m]:
                    blocked.add(span[m])
                    break
        if blocked:
            logits = logits.clone()
            logits[list(blocked)] = float("-inf")
        return logits


@torch.inference_mode()
def similar_tokens(model, tokens: set[int], threshold: float) -> set[int]:
    """Tokens whose input embedding is within ``threshold`` cosine of one of ``tokens``."""
    if not tokens:
        return set()
    embeddings = model.get_input_embeddings().weight.float()
    normed = torch.nn.functional.normalize(embeddings, dim=-1)
    similarity = normed[sorted(tokens)] @ normed.T
    return set((similarity > threshold).any(0).nonzero().flatten().tolist())
