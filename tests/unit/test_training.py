"""The shared training loop on real (tiny) models: determinism, accumulation
invariance, masking, cancellation, non-finite losses, LoRA and KL retain terms."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from core.data.encoding import IGNORE_INDEX, collate, encode_qa
from core.errors import Cancelled, NonFiniteLoss
from core.methods import get_method
from core.models.scoring import sequence_nll
from core.spec import DEFAULT_PROMPT_TEMPLATE, LoraSpec
from core.training.loop import Callbacks, run_training
from tests.fixtures.models import random_llama


@pytest.fixture(scope="module")
def tiny_data(tiny_encoded):
    return tiny_encoded


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _train(
    tiny_demo, tiny_data, method, overrides, *, seed=0, lora=None, callbacks=None, model=None
):
    from core.models.loading import load_model

    tokenizer, forget, retain = tiny_data
    if model is None:
        model, _ = load_model(str(tiny_demo.target), dtype="fp32")
    hparams = get_method(method).parse_hyperparameters(
        {"learning_rate": 1e-3, "epochs": 1, "warmup_ratio": 0.0, "precision": "fp32", **overrides}
    )
    return run_training(
        model,
        tokenizer,
        forget,
        retain,
        get_method(method),
        hparams,
        seed=seed,
        lora=lora,
        callbacks=callbacks,
    )


def test_labels_mask_the_prompt_and_nll_sums_answer_tokens_only(word_tokenizer):
    example = encode_qa(
        word_tokenizer,
        "Where was he born?",
        "In the city.",
        max_length=64,
        template=DEFAULT_PROMPT_TEMPLATE,
    )
    prompt = [word_tokenizer.bos_token_id] + word_tokenizer(
        "Question: Where was he born?\nAnswer:", add_special_tokens=False
    )["input_ids"]
    answer = word_tokenizer(" In the city.", add_special_tokens=False)["input_ids"] + [
        word_tokenizer.eos_token_id
    ]
    assert example.input_ids == prompt + answer
    assert example.labels == [IGNORE_INDEX] * len(prompt) + answer
    assert example.n_answer_tokens == len(answer)

    short = encode_qa(
        word_tokenizer, "Who?", "Me.", max_length=64, template=DEFAULT_PROMPT_TEMPLATE
    )
    batch = collate([example, short], word_tokenizer.pad_token_id)
    assert batch["attention_mask"][1].sum() == len(short.input_ids)
    assert (batch["labels"][1, len(short.input_ids) :] == IGNORE_INDEX).all()

    model = random_llama(word_tokenizer)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nll, n_tokens = sequence_nll(logits, batch["labels"])
    # Independent computation: log_softmax at each answer position, one sequence at a time.
    for row, ex in enumerate((example, short)):
        single = model(input_ids=torch.tensor([ex.input_ids])).logits[0].log_softmax(-1)
        expected = -sum(
            single[t - 1, ex.input_ids[t]]
            for t in range(len(ex.input_ids))
            if ex.labels[t] != IGNORE_INDEX
        )
        assert nll[row].item() == pytest.approx(expected.item(), rel=1e-4)
        assert n_tokens[row].item() == ex.n_answer_tokens


def test_same_seed_gives_the_same_loss_trace(tiny_demo, tiny_data):
    first = _train(
        tiny_demo, tiny_data, "simnpo", {"batch_size": 4, "gradient_accumulation_steps": 1}
    )
    second = _train(
        tiny_demo, tiny_data, "simnpo", {"batch_size": 4, "gradient_accumulation_steps": 1}
    )
    assert [m.loss for m in first.history] == [m.loss for m in second.history]
    other = _train(
        tiny_demo, tiny_data, "simnpo", {"batch_size": 4, "gradient_accumulation_steps": 1}, seed=1
    )
    assert [m.loss for m in other.history] != [m.loss for m in first.history]


@pytest.mark.parametrize(
    "method,retain_loss",
    [
        ("npo", "nll"),
        ("graddiff", "nll"),
        ("ga", "none"),
        ("simnpo", "kl"),
        ("flat", "none"),
        ("loku", "nll"),
    ],
)
def test_batch_8_x_1_equals_batch_2_x_4(tiny_demo, tiny_data, method, retain_loss):
    """Token-normalized (GA, NLL retain) and sequence-normalized (NPO, SimNPO) terms alike
    are divided by the whole effective batch, so micro-batching does not change updates."""
    overrides = {"retain_loss": retain_loss, "retain_coeff": 1.0 if retain_loss != "none" else 0.0}
    big = _train(
        tiny_demo,
        tiny_data,
        method,
        {"batch_size": 8, "gradient_accumulation_steps": 1, **overrides},
    )
    small = _train(
        tiny_demo,
        tiny_data,
        method,
        {"batch_size": 2, "gradient_accumulation_steps": 4, **overrides},
    )
    assert big.steps == small.steps == 2  # 16 forget examples / 8
    for a, b in zip(big.history, small.history):
        assert a.loss == pytest.approx(b.loss, rel=1e-4, abs=1e-6)
        assert a.grad_norm == pytest.approx(b.grad_norm, rel=1e-3)
    if retain_loss == "kl":
        # At step 1 the model is its own KL reference: the KL gradient is zero but for
        # kernel noise (SDPA's training and inference paths differ by ~1e-7), and AdamW's
        # g / sqrt(v) turns that noise into updates of ~lr whose sign depends on the batch
        # shape. The loss and gradient-norm traces above are the check here.
        return
    # AdamW divides by sqrt(v): where a gradient is ~1e-9, float noise in the summation
    # order moves that element's update by a visible share of lr (seen: 1e-5 with
    # transformers 5.x kernels). A pairing or normalization error moves every element by
    # ~lr, so a tolerance of a tenth of lr still catches those.
    torch.testing.assert_close(_params(big.model), _params(small.model), rtol=1e-4, atol=1e-4)


def test_step_metrics_carry_losses_lr_and_gradient_weights(tiny_demo, tiny_data):
    result = _train(
        tiny_demo,
        tiny_data,
        "npo",
        {"batch_size": 4, "gradient_accumulation_steps": 1, "warmup_ratio": 0.5},
    )
    first = result.history[0]
    assert first.step == 1 and first.total_steps == 4
    assert first.lr == 0.0  # linear warm-up starts at zero
    # At the first step the model is the reference: NPO's weights are exactly 1.
    assert first.weight_mean == pytest.approx(1.0, abs=1e-5)
    assert first.forget_loss == pytest.approx(
        2 / 0.1 * torch.log(torch.tensor(2.0)).item(), rel=1e-4
    )
    assert first.retain_loss is not None and first.grad_norm > 0
    assert result.history[-1].tokens > first.tokens > 0
    assert result.history[-1].epoch == pytest.approx(1.0)


def test_cancellation_is_checked_every_step(tiny_demo, tiny_data):
    polls = []

    def should_cancel():
        polls.append(1)
        return len(polls) > 3

    with pytest.raises(Cancelled):
        _train(
            tiny_demo,
            tiny_data,
            "simnpo",
            {"batch_size": 2, "gradient_accumulation_steps": 1},
            callbacks=Callbacks(should_cancel=should_cancel),
        )
    assert len(polls) == 4


def test_non_finite_loss_stops_with_a_clear_error(tiny_demo, tiny_data):
    from core.models.loading import load_model

    model, _ = load_model(str(tiny_demo.target), dtype="fp32")
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLoss) as error:
        _train(tiny_demo, tiny_data, "ga", {"batch_size": 4}, model=model)
    assert error.value.code == "non_finite_loss"


def test_non_finite_gradients_with_a_finite_loss_stop_the_run(tiny_demo, tiny_data):
    from core.models.loading import load_model

    model, _ = load_model(str(tiny_demo.target), dtype="fp32")
    # The loss stays finite; the backward pass overflows (as an fp32 overflow in a deep
    # network would), which clipping cannot repair: the run must stop before the update.
    model.lm_head.weight.register_hook(lambda grad: grad * float("inf"))
    before = _params(model).clone()
    with pytest.raises(NonFiniteLoss, match="gradient norm"):
        _train(tiny_demo, tiny_data, "ga", {"batch_size": 4}, model=model)
    assert torch.equal(_params(model), before)


@pytest.mark.parametrize(
    "precision,lora,expected",
    [
        ("fp32", False, "fp32"),
        ("auto", False, "fp32"),  # no GPU here; on one, autocast bf16 over fp32 weights
        ("bf16", False, "fp32"),  # mixed precision keeps fp32 master weights
        ("fp16", False, "fp32"),
        ("bf16", True, "bf16"),  # frozen LoRA base weights may stay low-precision
        ("fp16", True, "fp16"),
        ("bf16-pure", False, "bf16"),
        ("bf16-pure", True, "bf16"),
    ],
)
def test_weights_load_in_fp32_for_mixed_precision(precision, lora, expected):
    from core.training.loop import weights_dtype

    assert weights_dtype(precision, lora) == expected


def test_npo_reference_pass_runs_under_the_training_autocast(tiny_demo, tiny_data):
    """At step 1 the model is the reference, so every NPO weight is 1, in bf16 too (a
    reference computed in fp32 against bf16 training forwards is off by ~1e-4). Not
    exactly 1: the reference pass pads to other lengths than the training micro-batches,
    which moves bf16 kernels by ~1e-5 (transformers 5.x)."""
    result = _train(
        tiny_demo, tiny_data, "npo", {"batch_size": 4, "precision": "bf16", "retain_loss": "none"}
    )
    first = result.history[0]
    assert first.weight_min == pytest.approx(1.0, abs=3e-5)
    assert first.weight_max == pytest.approx(1.0, abs=3e-5)


def test_lora_checkpoint_holds_the_adapter_and_a_merged_model_that_load_alike(
    tiny_demo, tiny_data, tmp_path
):
    from transformers import AutoModelForCausalLM

    from core.models.checkpoint import save_checkpoint, verify_checkpoint
    from core.models.loading import load_model

    tokenizer, forget, _ = tiny_data
    result = _train(
        tiny_demo,
        tiny_data,
        "simnpo",
        {"batch_size": 4, "retain_loss": "none"},
        lora=LoraSpec(r=4, alpha=8),
    )
    folder = tmp_path / "checkpoint"
    manifest = save_checkpoint(
        result.model,
        tokenizer,
        folder,
        info={"base_model": "demo-target"},
        merge_lora=True,
    )
    assert manifest["kind"] == "lora_adapter" and manifest["merged"] == "merged"
    paths = {entry["path"] for entry in manifest["files"]}
    assert {"adapter_model.safetensors", "adapter_config.json", "merged/model.safetensors"} <= paths
    assert verify_checkpoint(folder) == []

    batch = collate(forget[:4], tokenizer.pad_token_id)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    merged = AutoModelForCausalLM.from_pretrained(folder / "merged").eval()
    # The adapter names its base as the job did (a registered name), resolved on load.
    from core.settings import Settings

    registry = {"demo-target": str(tiny_demo.target)}
    settings = Settings(home=tmp_path / "home", model_roots=[tiny_demo.root])
    through_adapter, _ = load_model(
        str(folder), dtype="fp32", lookup=registry.get, settings=settings
    )
    with torch.no_grad():
        expected = result.model.eval()(**inputs).logits
        assert torch.allclose(merged(**inputs).logits, expected, atol=1e-5)
        assert torch.allclose(through_adapter.eval()(**inputs).logits, expected, atol=1e-5)

    (folder / "merged" / "model.safetensors").write_bytes(b"tampered")
    assert verify_checkpoint(folder) == ["merged/model.safetensors"]


@pytest.mark.parametrize(
    "method,retain_loss", [("simnpo", "kl"), ("npo", "nll"), ("ga", "none"), ("graddiff", "nll")]
)
def test_lora_trains_only_adapters_and_kl_uses_the_base_with_adapters_off(
    tiny_demo, tiny_data, method, retain_loss
):
    from core.models.loading import load_model

    model, _ = load_model(str(tiny_demo.target), dtype="fp32")
    base = copy.deepcopy(model)
    overrides = {
        "batch_size": 4,
        "retain_loss": retain_loss,
        "retain_coeff": 1.0 if retain_loss != "none" else 0.0,
    }
    result = _train(
        tiny_demo, tiny_data, method, overrides, lora=LoraSpec(r=4, alpha=8), model=model
    )
    trainable = [n for n, p in result.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    if retain_loss == "kl":
        # The first retain KL is 0: adapters start as a no-op, so current = reference.
        assert result.history[0].retain_loss == pytest.approx(0.0, abs=1e-6)
    merged = result.model.merge_and_unload()
    assert not torch.allclose(_params(merged), _params(base))


def test_unlearning_lowers_forget_likelihood_and_keeps_retain(tiny_demo, tiny_data):
    from core.models.loading import load_model

    tokenizer, forget, retain = tiny_data

    def mean_nll(model, examples):
        batch = collate(examples, tokenizer.pad_token_id)
        with torch.no_grad():
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        nll, n = sequence_nll(logits, batch["labels"])
        return (nll / n).mean().item()

    original, _ = load_model(str(tiny_demo.target), dtype="fp32")
    before_forget, before_retain = mean_nll(original, forget), mean_nll(original, retain[:64])
    result = _train(
        tiny_demo,
        tiny_data,
        "simnpo",
        {
            "batch_size": 4,
            "gradient_accumulation_steps": 1,
            "epochs": 5,
            "learning_rate": 2e-3,
            "forget_coeff": 1.0,
        },
    )
    after_forget, after_retain = mean_nll(result.model, forget), mean_nll(result.model, retain[:64])
    assert after_forget > before_forget + 1.0  # per-token likelihood drops by e or more
    assert after_retain < before_retain + 0.5


def test_demo_assets_are_memorized_and_deterministic(tiny_demo):
    info = json.loads((tiny_demo.root / "assets.json").read_text())
    assert info["summary"]["target"]["final_loss"] < 0.1
    assert info["summary"]["n_forget10"] == 16
    lines = tiny_demo.data["forget10"].read_text().splitlines()
    record = json.loads(lines[0])
    assert len(record["perturbed_answer"]) == 5 and record["paraphrased_answer"] != record["answer"]
