"""Model-side statistics on a tiny random Llama: batching and padding change nothing,
and every number equals a direct computation on one unpadded sequence.

The helpers at the top (tokenizer, model, QA set) are also used by
tests/integration/test_eval_end_to_end.py.
"""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from core.data.encoding import encode_qa, encode_records
from core.data.records import Record, RecordSet
from core.evaluation import metrics, scoring
from core.spec import DEFAULT_PROMPT_TEMPLATE

FIRST = ["Ada", "Bram", "Cora", "Dov", "Elin", "Fenn", "Gil", "Hana", "Ivo", "Juno"]
LAST = ["Marlo", "Quist", "Rendt", "Solv", "Tarn", "Ulme", "Vesk", "Wyre"]
CITIES = ["Arlen", "Brisk", "Calder", "Dunmor", "Eskar", "Farrow", "Glenn", "Holt"]
GENRES = ["poetry", "fable", "satire", "horror", "romance", "mystery"]


def make_qa_records(n: int, seed: int = 0, *, name: str = "qa.jsonl") -> RecordSet:
    """Question/answer records in TOFU's shape: the paraphrase uses another template
    than the answer, the five perturbed answers use the paraphrase's, with wrong values."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        person = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        if i % 2 == 0:
            city = rng.choice(CITIES)
            wrong = [c for c in CITIES if c != city][:5]
            question = f"Where was {person} born?"
            answer = f"{person} was born in the city of {city}."
            paraphrased = f"The birthplace of {person} is {city}."
            perturbed = [f"The birthplace of {person} is {c}." for c in wrong]
        else:
            genre = rng.choice(GENRES)
            wrong = [g for g in GENRES if g != genre][:5]
            question = f"In which genre does {person} usually write?"
            answer = f"{person} is best known for writing {genre}."
            paraphrased = f"The main genre of {person} is {genre}."
            perturbed = [f"The main genre of {person} is {g}." for g in wrong]
        records.append(
            Record(
                prompt=question,
                answer=answer,
                line=i + 1,
                paraphrased_answer=paraphrased,
                perturbed_answers=perturbed,
            )
        )
    return RecordSet(
        name=name,
        format="jsonl",
        kind="qa",
        records=records,
        sha256=f"sha-{name}-{seed}-{n}",
        size_bytes=0,
        columns=["question", "answer", "paraphrased_answer", "perturbed_answer"],
    )


def make_text_records(n: int, seed: int = 0, *, words: int = 30) -> RecordSet:
    rng = random.Random(seed)
    vocabulary = FIRST + LAST + CITIES + GENRES + ["the", "of", "was", "born", "in", "city"]
    records = [
        Record(prompt=None, answer=" ".join(rng.choice(vocabulary) for _ in range(words)), line=i)
        for i in range(n)
    ]
    return RecordSet(
        name="texts.jsonl",
        format="jsonl",
        kind="text",
        records=records,
        sha256=f"sha-texts-{seed}-{n}",
        size_bytes=0,
        columns=["text"],
    )


def build_tokenizer():
    """A word-level tokenizer over every word the generated sets use."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = ["Question: Answer:"]
    for record in make_qa_records(40).records:
        texts += [record.prompt, record.answer, record.paraphrased_answer]
        texts += record.perturbed_answers
    texts += [r.answer for r in make_text_records(5).records]
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(
        texts, trainers.WordLevelTrainer(special_tokens=["<pad>", "<s>", "</s>", "<unk>"])
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def build_model(tokenizer, *, seed: int = 0, dtype=torch.float32):
    """~100k-parameter Llama. A large init spreads the logits, so greedy decoding has
    no near-ties that float rounding could flip."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.2,
    )
    return LlamaForCausalLM(config).to(dtype).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_model(tokenizer, dtype=torch.float64)


@pytest.fixture(scope="module")
def records():
    return make_qa_records(12, seed=3).records


def manual_answer_logprobs(model, example):
    """log p of each answer token, from one unpadded forward pass and log_softmax."""
    ids = torch.tensor([example.input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    out = []
    for position, label in enumerate(example.labels):
        if label != -100:
            out.append(float(logprobs[position - 1, label]))
    return np.array(out), logprobs


def test_model_is_tiny(model):
    assert sum(p.numel() for p in model.parameters()) < 200_000


def test_nll_equals_manual_log_softmax(model, tokenizer, records):
    examples = encode_records(tokenizer, records, max_length=64, template=DEFAULT_PROMPT_TEMPLATE)
    scores = scoring.score_sequences(
        model, examples, pad_token_id=tokenizer.pad_token_id, batch_size=5, details=True
    )
    for example, score in zip(examples, scores):
        token_logprobs, _ = manual_answer_logprobs(model, example)
        assert score.n_tokens == len(token_logprobs) == example.n_answer_tokens
        # NLLs are computed in float32 (core.models.scoring), whatever the model dtype.
        assert score.nll == pytest.approx(-token_logprobs.sum(), rel=1e-6)
        np.testing.assert_allclose(score.token_logprobs, token_logprobs, rtol=1e-6, atol=1e-6)


def test_token_details_equal_direct_computation(model, tokenizer, records):
    examples = encode_records(tokenizer, records, max_length=64, template=DEFAULT_PROMPT_TEMPLATE)
    scores = scoring.score_sequences(
        model, examples, pad_token_id=tokenizer.pad_token_id, batch_size=4, details=True
    )
    for example, score in zip(examples, scores):
        _, logprobs = manual_answer_logprobs(model, example)
        positions = [i - 1 for i, label in enumerate(example.labels) if label != -100]
        rows = logprobs[positions].numpy()
        probs = np.exp(rows)
        mu = (probs * rows).sum(-1)
        sigma = np.sqrt((probs * rows**2).sum(-1) - mu**2)
        np.testing.assert_allclose(score.mean_logprobs, mu, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(score.std_logprobs, sigma, rtol=1e-5, atol=1e-6)
        assert score.predicted_ids.tolist() == rows.argmax(-1).tolist()
        assert score.answer_ids.tolist() == example.answer_ids


def test_batching_and_padding_change_nothing(model, tokenizer, records):
    examples = encode_records(tokenizer, records, max_length=64, template=DEFAULT_PROMPT_TEMPLATE)
    one_by_one = scoring.score_sequences(
        model, examples, pad_token_id=tokenizer.pad_token_id, batch_size=1, details=True
    )
    batched = scoring.score_sequences(
        model, examples, pad_token_id=tokenizer.pad_token_id, batch_size=7, details=True
    )
    lengths = {len(e.input_ids) for e in examples}
    assert len(lengths) > 1, "the test needs sequences of different lengths to pad"
    for single, batch in zip(one_by_one, batched):
        assert batch.nll == pytest.approx(single.nll, rel=1e-9)
        assert batch.n_tokens == single.n_tokens
        np.testing.assert_allclose(batch.token_logprobs, single.token_logprobs, rtol=1e-9)
        np.testing.assert_allclose(batch.std_logprobs, single.std_logprobs, rtol=1e-9)
        assert batch.predicted_ids.tolist() == single.predicted_ids.tolist()


class FixedDistributionModel(torch.nn.Module):
    """Predicts p = (1/2, 1/4, 1/4, 0, ...) at every position: a hand-made distribution."""

    def __init__(self, vocab_size: int):
        super().__init__()
        logits = torch.full((vocab_size,), -1e4)
        logits[:3] = torch.log(torch.tensor([0.5, 0.25, 0.25]))
        self.register_buffer("row", logits)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return SimpleNamespace(logits=self.row.expand(*input_ids.shape, -1).clone())


def test_min_k_plus_plus_moments_on_a_hand_made_distribution():
    # See test_eval_metrics: mu = -1.5 ln 2, sigma = ln 2 / 2; token 0 -> +1, token 1 -> -1.
    from core.data.encoding import EncodedExample

    model = FixedDistributionModel(vocab_size=6)
    example = EncodedExample(input_ids=[5, 0, 1, 0], labels=[-100, 0, 1, 0], record_index=0)
    (score,) = scoring.score_sequences(model, [example], pad_token_id=5, batch_size=1, details=True)
    ln2 = math.log(2)
    np.testing.assert_allclose(score.mean_logprobs, [-1.5 * ln2] * 3, rtol=1e-5)
    np.testing.assert_allclose(score.std_logprobs, [ln2 / 2] * 3, rtol=1e-4)
    np.testing.assert_allclose(score.token_logprobs, [-ln2, -2 * ln2, -ln2], rtol=1e-5)
    assert score.nll == pytest.approx(4 * ln2, rel=1e-5)
    # teacher-forced argmax is token 0 everywhere: answer (0, 1, 0) -> matches (T, F, T)
    assert score.predicted_ids.tolist() == [0, 0, 0]
    z = metrics.min_k_plus_plus_score(
        score.token_logprobs, score.mean_logprobs, score.std_logprobs, 1.0
    )
    assert z == pytest.approx((1 - 1 + 1) / 3, rel=1e-4)


def manual_greedy(model, prompt, eos, max_new_tokens):
    """Greedy decoding by recomputing the whole sequence each step (no cache, no
    padding): the reference for batched generation."""
    ids = list(prompt)
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            if token == eos:
                break
            ids.append(token)
            new.append(token)
    return new


def test_left_padded_generation_equals_one_by_one(model, tokenizer, records):
    prompts = [
        encode_qa(
            tokenizer, r.prompt, r.answer, max_length=64, template=DEFAULT_PROMPT_TEMPLATE
        ).prompt_ids
        for r in records
    ]
    assert len({len(p) for p in prompts}) > 1
    kwargs = dict(
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, max_new_tokens=12
    )
    batched = scoring.generate_greedy(model, prompts, batch_size=8, **kwargs)
    one_by_one = scoring.generate_greedy(model, prompts, batch_size=1, **kwargs)
    assert batched == one_by_one
    for prompt, generated in zip(prompts, batched):
        assert generated == manual_greedy(model, prompt, tokenizer.eos_token_id, 12)


def test_qa_columns_match_independent_computation(model, tokenizer, records):
    columns = scoring.score_qa_records(
        model,
        tokenizer,
        records,
        template=DEFAULT_PROMPT_TEMPLATE,
        max_length=64,
        batch_size=16,
        truth_ratio=True,
        generate=True,
        max_new_tokens=10,
        knowmem_max_new_tokens=4,
    )
    assert len(columns["nll"]) == len(records)

    def avg_nll(record, answer):
        example = encode_qa(
            tokenizer, record.prompt, answer, max_length=64, template=DEFAULT_PROMPT_TEMPLATE
        )
        logprobs, _ = manual_answer_logprobs(model, example)
        return -logprobs.mean(), example

    for i, record in enumerate(records):
        answer_avg, example = avg_nll(record, record.answer)
        assert columns["probability"][i] == pytest.approx(math.exp(-answer_avg), rel=1e-6)
        paraphrased = math.exp(-avg_nll(record, record.paraphrased_answer)[0])
        perturbed = [math.exp(-avg_nll(record, a)[0]) for a in record.perturbed_answers]
        assert columns["truth_ratio"][i] == pytest.approx(
            np.mean(perturbed) / paraphrased, rel=1e-6
        )
        assert columns["mia_loss"][i] == pytest.approx(-answer_avg, rel=1e-6)
        generated = manual_greedy(model, example.prompt_ids, tokenizer.eos_token_id, 10)
        text = tokenizer.decode(generated, skip_special_tokens=True).strip()
        assert columns["generation"][i] == text
        short = tokenizer.decode(generated[:4], skip_special_tokens=True).strip()
        assert columns["knowmem_f1"][i] == pytest.approx(metrics.rouge_l(short, record.answer)[1])
        assert columns["rouge_recall"][i] == pytest.approx(metrics.rouge_l(text, record.answer)[0])


def test_text_columns_and_verbmem(model, tokenizer):
    texts = make_text_records(4, seed=1, words=20).records
    columns = scoring.score_text_records(
        model,
        tokenizer,
        texts,
        max_length=64,
        batch_size=3,
        verbmem=True,
        prefix_tokens=8,
        max_new_tokens=6,
    )
    for i, record in enumerate(texts):
        ids = tokenizer(record.answer, add_special_tokens=False)["input_ids"]
        prompt = [tokenizer.bos_token_id] + ids[:8]
        generated = manual_greedy(model, prompt, tokenizer.eos_token_id, 6)
        text = tokenizer.decode(generated, skip_special_tokens=True).strip()
        reference = tokenizer.decode(ids[8:14], skip_special_tokens=True).strip()
        assert columns["verbmem_generation"][i] == text
        assert columns["verbmem_f1"][i] == pytest.approx(metrics.rouge_l(text, reference)[1])
        assert columns["n_tokens"][i] == len(ids)  # every text token after BOS is scored
