"""FILA, the Fisher-weighted LoRA initialisation: the decomposition against a matrix
built from known singular vectors, the masked and batched Fisher pass, an unchanged
model at step 0, and a job whose saved adapter and merged model load elsewhere."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.data.encoding import IGNORE_INDEX, collate, encode_qa
from core.spec import DEFAULT_PROMPT_TEMPLATE, LoraSpec
from core.training.fila import (
    fila_decompose,
    fila_initialise,
    fisher_diagonals,
    row_scores,
)
from tests.fixtures.models import random_llama


def test_row_scores_are_root_row_sums_of_the_fisher_ratio():
    # I = F_f / (1e-5 + F_r) ~ [[1, 3], [4, 4]]: rows sum to 4 and 8
    fisher_forget = torch.tensor([[1.0, 3.0], [8.0, 8.0]])
    fisher_retain = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    assert row_scores(fisher_forget, fisher_retain).tolist() == pytest.approx(
        [2.0, 8**0.5], rel=1e-4
    )


def test_adapters_span_the_top_singular_directions_of_the_weighted_matrix():
    """W = diag(1/r) U S V^T with known orthonormal U, V and S = (5, 3, 1, 0.5): the
    weighted matrix diag(r) W has exactly those singular vectors, so rank-2 adapters
    must span U[:, :2] (after diag(r)) and V[:, :2], and s B A = diag(1/r) U2 S2 V2^T."""
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(6, 4, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(5, 4, dtype=torch.float64))
    s = torch.tensor([5.0, 3.0, 1.0, 0.5], dtype=torch.float64)
    rows = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5, 0.8], dtype=torch.float64)
    weight = (u * s) @ v.T / rows.unsqueeze(1)
    scaling = 2.0

    a, b = (x.double() for x in fila_decompose(weight, rows, rank=2, scaling=scaling))
    assert a.shape == (2, 5) and b.shape == (6, 2)
    top_v, top_u = v[:, :2], u[:, :2]
    # projecting onto the top directions changes nothing
    assert torch.allclose(a @ top_v @ top_v.T, a, atol=1e-5)
    weighted_b = rows.unsqueeze(1) * b
    # (up to the 1e-5 in B = diag(1 / (r + 1e-5)) ...)
    assert torch.allclose(top_u @ top_u.T @ weighted_b, weighted_b, atol=1e-4)
    best = (top_u * s[:2]) @ top_v.T / rows.unsqueeze(1)
    assert torch.allclose(scaling * b @ a, best, rtol=1e-4, atol=1e-4)


def test_a_rank_above_the_matrix_pads_with_zero_adapters():
    a, b = fila_decompose(torch.eye(3), torch.ones(3), rank=5, scaling=1.0)
    assert a.shape == (5, 3) and b.shape == (3, 5)
    assert torch.allclose(b @ a, torch.eye(3), atol=1e-5)


@pytest.fixture
def model_and_examples(word_tokenizer):
    model = random_llama(word_tokenizer, seed=1).float()
    qa = [
        ("Where was he born?", "In the city."),
        ("What did she write?", "Many books about the sea."),
        ("When was he born?", "In spring."),
    ]
    examples = [
        encode_qa(word_tokenizer, q, a, max_length=64, template=DEFAULT_PROMPT_TEMPLATE)
        for q, a in qa
    ]
    return model, examples, word_tokenizer.pad_token_id


def test_fisher_pass_is_batched_and_masked_to_answer_tokens(model_and_examples):
    """Batches [e0, e1], [e2]: F = (g1^2 n1 + g2^2 n2) / (n1 + n2), g the gradient of the
    batch's mean NLL over answer positions only (written out here with explicit masks)."""
    model, examples, pad_id = model_and_examples
    weight = model.model.layers[0].self_attn.q_proj.weight
    fisher = fisher_diagonals(model, [weight], examples, pad_id, 2, "cpu")[0]

    expected, total = torch.zeros_like(weight), 0
    for batch_examples in (examples[:2], examples[2:]):
        batch = collate(batch_examples, pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        answer = [
            (row, t)
            for row, e in enumerate(batch_examples)
            for t in range(1, len(e.labels))
            if e.labels[t] != IGNORE_INDEX
        ]
        token_logits = torch.stack([logits[row, t - 1] for row, t in answer])
        targets = torch.tensor([batch["labels"][row, t] for row, t in answer])
        loss = F.cross_entropy(token_logits, targets, reduction="mean")
        (grad,) = torch.autograd.grad(loss, weight)
        expected += grad.pow(2) * len(answer)
        total += len(answer)
    assert total == sum(e.n_answer_tokens for e in examples)
    assert torch.allclose(fisher, expected / total, rtol=1e-5, atol=1e-12)
    assert fisher.abs().sum() > 0


def test_fila_leaves_the_logits_unchanged_at_step_0(model_and_examples):
    from peft import LoraConfig, get_peft_model

    model, examples, pad_id = model_and_examples
    batch = collate(examples, pad_id)
    with torch.no_grad():
        before = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        q_before = model.model.layers[0].self_attn.q_proj.weight.clone()
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    offsets = fila_initialise(peft_model, examples[:2], examples[2:], pad_id, 2, "cpu")
    layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.lora_B["default"].weight.abs().sum() > 0  # not peft's zero init
    assert not torch.allclose(layer.base_layer.weight, q_before)
    assert not any(p.requires_grad for n, p in peft_model.named_parameters() if "lora" not in n)
    assert len(offsets) == 2 * 7  # q, k, v, o, gate, up, down per layer; not lm_head
    with torch.no_grad():
        after = peft_model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
    assert torch.allclose(after, before, atol=1e-4)


def test_fila_orients_gpt2_conv1d_adapters_as_out_by_in(tiny_gpt2_demo):
    """GPT-2's Conv1D keeps its weight as [in, out]. At full rank the decomposition is
    exact: ``scaling * B A`` is the whole weight, transposed to [out, in] as LoRA's
    adapters are, so the base weight left behind is (up to the row epsilon) zero, and
    the model computes the same function."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_demo.tokenizer)
    torch.manual_seed(1)
    width = 16
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tokenizer), n_embd=width, n_layer=1, n_head=2, n_positions=64)
    ).eval()
    qa = [("Where was he born?", "In the city."), ("When was he born?", "In spring.")]
    examples = [
        encode_qa(tokenizer, q, a, max_length=64, template=DEFAULT_PROMPT_TEMPLATE) for q, a in qa
    ]
    batch = collate(examples, tokenizer.pad_token_id)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    originals = {
        n: m.weight.clone() for n, m in model.named_modules() if type(m).__name__ == "Conv1D"
    }
    with torch.no_grad():
        before = model(**inputs).logits
    peft_model = get_peft_model(
        model,
        LoraConfig(r=width, lora_alpha=width, target_modules="all-linear", task_type="CAUSAL_LM"),
    ).eval()
    offsets = fila_initialise(
        peft_model, examples[:1], examples[1:], tokenizer.pad_token_id, 1, "cpu"
    )
    assert len(offsets) == 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    for path, (b0, a0) in offsets.items():
        weight = originals[path.removeprefix("base_model.model.")]
        assert b0.shape == (weight.shape[1], width) and a0.shape == (width, weight.shape[0])
        layer = peft_model.get_submodule(path)
        assert torch.allclose(b0 @ a0, weight.T, atol=1e-3 * float(weight.abs().max()))
        assert layer.base_layer.weight.abs().max() < 1e-3 * weight.abs().max()
    with torch.no_grad():
        assert torch.allclose(peft_model(**inputs).logits, before, atol=1e-4)


@pytest.mark.parametrize("demo", ["tiny_demo", "tiny_gpt2_demo"])
def test_a_lora_fila_job_saves_an_adapter_for_the_original_base_and_a_merged_model(
    demo, tmp_path, request
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from core.data.encoding import encode_record_set
    from core.data.records import read_records
    from core.methods import get_method
    from core.models.checkpoint import save_checkpoint
    from core.models.loading import load_model
    from core.training.loop import run_training

    tiny_demo = request.getfixturevalue(demo)
    model, tokenizer = load_model(str(tiny_demo.target), dtype="fp32")

    def encode(name):
        return encode_record_set(
            tokenizer,
            read_records(tiny_demo.data[name]),
            max_length=64,
            template=DEFAULT_PROMPT_TEMPLATE,
        )

    forget, retain = encode("forget10"), encode("retain90")
    method = get_method("loku")
    hparams = method.parse_hyperparameters(
        {"learning_rate": 1e-3, "epochs": 1, "max_steps": 3, "precision": "fp32"}
    )
    result = run_training(
        model,
        tokenizer,
        forget,
        retain,
        method,
        hparams,
        lora=LoraSpec(r=4, alpha=8, init="fila", merge=True),
    )
    trained = result.model.eval()
    batch = collate(forget[:4], tokenizer.pad_token_id)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        expected = trained(**inputs).logits

    folder = tmp_path / "checkpoint"
    save_checkpoint(
        trained, tokenizer, folder, info={"base_model": str(tiny_demo.target)}, merge_lora=True
    )

    original, _ = load_model(str(tiny_demo.target), dtype="fp32")
    with torch.no_grad():
        base_logits = original(**inputs).logits
    adapted = PeftModel.from_pretrained(original, folder).eval()
    assert adapted.peft_config["default"].r == 8  # [B | -B0] [A ; A0]
    merged = AutoModelForCausalLM.from_pretrained(folder / "merged", torch_dtype=torch.float32)
    with torch.no_grad():
        assert torch.allclose(adapted(**inputs).logits, expected, atol=1e-4)
        assert torch.allclose(merged.eval()(**inputs).logits, expected, atol=1e-4)
    assert not torch.allclose(base_logits, expected, atol=1e-3)  # training did something
