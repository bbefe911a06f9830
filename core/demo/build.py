"""Build the demo assets offline: data, tokenizer, a target model and a retrain oracle.

- data: the generated fictitious-author set (``authors.generate``) with TOFU's splits
  (forget01/05/10, retain99/95/90), held-out authors and world facts, as JSONL;
- tokenizer: word-level, trained with the ``tokenizers`` library on all that text
  (byte-level BPE for a preset that asks for it);
- ``target``: a small ``LlamaConfig`` model (or ``GPT2Config``) fine-tuned on every
  author plus the world facts until it has memorized them;
- ``retrain``: the same, with the same settings and seed, on everything *except* the
  forget10 authors: the model unlearning tries to match (forget quality's oracle).

Everything is deterministic by seed and cached: a second call with the same preset
and seed returns the existing folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from core.demo import authors

log = logging.getLogger(__name__)

ASSETS_VERSION = 2
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
FORGET_SPLITS = (1, 5, 10)
ORACLE_SPLIT = 10


@dataclass(frozen=True)
class DemoPreset:
    n_authors: int
    questions_per_author: int
    n_holdout_authors: int
    n_countries: int
    hidden_size: int
    n_layers: int
    n_heads: int
    intermediate_size: int
    epochs: int
    learning_rate: float
    batch_size: int = 32
    description: str = ""
    # How the model is built: a preset that differs here checks the service's defaults
    # on a model and data they were not tuned on (issue 8).
    tokenizer: str = "word"  # "word" (a token per word) or "bpe" (byte-level, GPT-2's kind)
    architecture: str = "llama"  # "llama" or "gpt2"
    vocab_size: int = 0  # BPE only: the merges' target size
    data_seed_offset: int = 0  # added to the seed for the generated authors


PRESETS: dict[str, DemoPreset] = {
    # For tests: trains in seconds, still memorizes its answers.
    "tiny": DemoPreset(
        n_authors=20,
        questions_per_author=8,
        n_holdout_authors=4,
        n_countries=6,
        hidden_size=64,
        n_layers=2,
        n_heads=4,
        intermediate_size=128,
        epochs=40,
        learning_rate=3e-3,
        batch_size=16,
        description="20 authors x 8 questions, ~0.1M parameters",
    ),
    # What `obliviate serve` registers at first start: about a minute on 2 cores.
    "demo": DemoPreset(
        n_authors=60,
        questions_per_author=12,
        n_holdout_authors=6,
        n_countries=20,
        hidden_size=128,
        n_layers=4,
        n_heads=4,
        intermediate_size=256,
        epochs=24,
        learning_rate=3e-3,
        batch_size=32,
        description="60 authors x 12 questions, ~0.8M parameters",
    ),
    # The mini-TOFU benchmark: more forget samples for the KS test (forget10 = 120).
    "bench": DemoPreset(
        n_authors=100,
        questions_per_author=12,
        n_holdout_authors=10,
        n_countries=30,
        hidden_size=128,
        n_layers=4,
        n_heads=4,
        intermediate_size=256,
        epochs=20,
        learning_rate=3e-3,
        batch_size=32,
        description="100 authors x 12 questions, ~0.85M parameters",
    ),
}
# Built unlike the presets the defaults were tuned on: other authors (another data seed),
# a byte-level BPE tokenizer (names split into pieces, a leading-space convention),
# GPT-2's architecture (learned positions, LayerNorm, GELU, tied embeddings, Conv1D
# layers) and, for the benchmark, another width. Nothing in the service is tuned on them.
_GPT2 = {"tokenizer": "bpe", "architecture": "gpt2", "data_seed_offset": 1000}
PRESETS["tiny-gpt2"] = replace(
    PRESETS["tiny"],
    intermediate_size=256,
    epochs=60,
    vocab_size=512,
    description="20 other authors x 8 questions, BPE, GPT-2, ~0.1M parameters",
    **_GPT2,
)
PRESETS["bench-gpt2"] = replace(
    PRESETS["bench"],
    hidden_size=192,
    n_heads=6,
    intermediate_size=768,
    epochs=30,
    learning_rate=2e-3,
    vocab_size=1024,
    description="100 other authors x 12 questions, BPE, GPT-2, ~2M parameters",
    **_GPT2,
)
# The same with three times the held-out authors: how much the verdict's holdout-based
# checks gain from a larger holdout set (docs/verdict.md). Another tokenizer and model
# than bench-gpt2 (the BPE merges are learned on all the text, holdout included).
PRESETS["bench-gpt2-h30"] = replace(
    PRESETS["bench-gpt2"],
    n_holdout_authors=30,
    description="100 other authors x 12 questions, 30 held-out authors, BPE, GPT-2, ~2M",
)


@dataclass
class DemoAssets:
    root: Path
    preset: str
    seed: int
    data: dict[str, Path] = field(default_factory=dict)
    target: Path | None = None
    retrain: Path | None = None
    tokenizer: Path | None = None
    summary: dict = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path) -> DemoAssets:
        info = json.loads((root / "assets.json").read_text())
        return cls(
            root=root,
            preset=info["preset"],
            seed=info["seed"],
            data={k: root / v for k, v in info["data"].items()},
            target=root / info["target"],
            retrain=root / info["retrain"],
            tokenizer=root / info["tokenizer"],
            summary=info.get("summary", {}),
        )

    def identity(self) -> dict:
        """What tells two builds of the same preset and seed apart: hashes of the
        tokenizer and of both models' weights, and the platform that trained them. A
        build is reproduced exactly on one machine (tests/unit/test_demo_identity.py);
        builds made by other sessions differed, and benchmark figures with them
        (docs/minitofu.md), which the platform may explain (not verified)."""
        return {
            "preset": self.preset,
            "seed": self.seed,
            "tokenizer_sha256": _files_sha256(self.tokenizer, "tokenizer.json"),
            "target_sha256": _files_sha256(self.target, "*.safetensors"),
            "retrain_sha256": _files_sha256(self.retrain, "*.safetensors"),
            "built_on": self.summary.get("built_on"),
        }


def _files_sha256(folder: Path | None, pattern: str) -> str | None:
    paths = sorted(folder.glob(pattern)) if folder is not None else []
    if not paths:
        return None
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _platform() -> dict:
    """The software and CPU a build trained on (assets.json's summary)."""
    import platform

    import tokenizers
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


ProgressFn = Callable[[str, int, int], None]  # (phase, done, total)


def build_demo_assets(
    out_dir: str | Path,
    preset: str = "demo",
    *,
    seed: int = 0,
    progress: ProgressFn | None = None,
    force: bool = False,
) -> DemoAssets:
    """Build (or reuse) the demo assets under ``out_dir``."""
    root = Path(out_dir).resolve()
    spec = PRESETS[preset]
    fingerprint = _fingerprint(preset, seed)
    marker = root / "assets.json"
    if marker.exists() and not force:
        info = json.loads(marker.read_text())
        if info.get("fingerprint") == fingerprint:
            return DemoAssets.load(root)
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    generated = authors.generate(
        spec.n_authors,
        spec.questions_per_author,
        n_holdout_authors=spec.n_holdout_authors,
        n_countries=spec.n_countries,
        seed=seed + spec.data_seed_offset,
    )
    data = write_data(generated, root / "data")
    train_tokenizer(generated, root / "tokenizer", kind=spec.tokenizer, vocab_size=spec.vocab_size)

    forget, retain = generated.split(ORACLE_SPLIT)
    summary = {"preset": asdict(spec), "built_on": _platform()}
    summary.update(_train_models(root, preset, seed, training_files(data), progress))
    summary["build_seconds"] = round(time.monotonic() - started, 1)
    summary["n_forget10"], summary["n_retain90"] = len(forget), len(retain)

    info = {
        "version": ASSETS_VERSION,
        "fingerprint": fingerprint,
        "preset": preset,
        "seed": seed,
        "data": {k: v.relative_to(root).as_posix() for k, v in data.items()},
        "target": "models/target",
        "retrain": "models/retrain",
        "tokenizer": "tokenizer",
        "summary": summary,
    }
    marker.write_text(json.dumps(info, indent=2))
    return DemoAssets.load(root)


def training_files(data: dict[str, Path]) -> dict[str, list[Path]]:
    """What each demo model trains on: the target on every author and the world facts,
    the retrain oracle on the same less the forget10 authors."""
    return {
        "target": [data["all"], data["world_facts"]],
        "retrain": [data[f"retain{100 - ORACLE_SPLIT}"], data["world_facts"]],
    }


def read_training_records(files: list[Path]) -> list[dict]:
    return [json.loads(line) for path in files for line in path.read_text().splitlines() if line]


def _train_models(
    root: Path, preset: str, seed: int, jobs: dict[str, list[Path]], progress: ProgressFn | None
) -> dict[str, dict]:
    """Train target and retrain side by side, one process and one thread each, when
    the machine has the cores: the two are independent and tiny models do not use a
    second thread well (core.runtime). Sequential inside daemonic processes (a Celery
    child cannot start processes) and on one core."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if (os.cpu_count() or 1) < 2 or multiprocessing.current_process().daemon:
        return {
            name: _train_one(root, preset, seed, name, files, progress)
            for name, files in jobs.items()
        }
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        queue = manager.Queue()
        relay = threading.Thread(target=_relay_progress, args=(queue, progress), daemon=True)
        relay.start()
        with ProcessPoolExecutor(max_workers=len(jobs), mp_context=context) as pool:
            futures = {
                name: pool.submit(_train_one, root, preset, seed, name, files, queue)
                for name, files in jobs.items()
            }
            results = {name: future.result() for name, future in futures.items()}
        queue.put(None)
        relay.join()
    return results


def _relay_progress(queue, progress: ProgressFn | None) -> None:
    while (message := queue.get()) is not None:
        if progress:
            progress(*message)


def _train_one(root: Path, preset: str, seed: int, name: str, files: list[Path], progress) -> dict:
    """Train one demo model on the given JSONL files; runs in a child process too, so it
    takes paths and reports progress through a callable or a queue."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    records = read_training_records(files)
    if progress is None:
        report = None
    elif callable(progress):
        report = lambda done, total: progress(f"training {name}", done, total)  # noqa: E731
    else:
        report = lambda done, total: progress.put((f"training {name}", done, total))  # noqa: E731
    return train_demo_model(
        tokenizer, records, root / "models" / name, PRESETS[preset], seed=seed, progress=report
    )


#: fields added after assets were first cached: at their defaults they leave a
#: preset's fingerprint (and the folders already built for it) as they were
_LATER_FIELDS = ("tokenizer", "architecture", "vocab_size", "data_seed_offset")


def _fingerprint(preset: str, seed: int) -> str:
    defaults = DemoPreset.__dataclass_fields__
    fields = {
        key: value
        for key, value in asdict(PRESETS[preset]).items()
        if key not in _LATER_FIELDS or value != defaults[key].default
    }
    payload = json.dumps({"v": ASSETS_VERSION, "preset": fields, "seed": seed}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def write_data(generated: authors.AuthorSet, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "all": generated.records,
        "holdout": generated.holdout,
        "world_facts": generated.world_facts,
    }
    for percent in FORGET_SPLITS:
        forget, retain = generated.split(percent)
        files[f"forget{percent:02d}"] = forget
        files[f"retain{100 - percent}"] = retain
    paths = {}
    for name, records in files.items():
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        paths[name] = path
    return paths


def _all_text(generated: authors.AuthorSet) -> list[str]:
    texts = []
    for record in generated.records + generated.holdout + generated.world_facts:
        texts += [
            record["question"],
            record["answer"],
            record["paraphrased_question"],
            record["paraphrased_answer"],
            *record["perturbed_answer"],
        ]
    return texts + ["Question: Answer:"]


def train_tokenizer(
    generated: authors.AuthorSet, folder: Path, *, kind: str = "word", vocab_size: int = 0
):
    """A word-level tokenizer: every made-up name is one token, which lets a ~1M
    parameter model memorize facts about it. ``kind="bpe"``: byte-level BPE as GPT-2's,
    where a made-up name is several pieces and a word's leading space is part of it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "bpe":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    elif kind == "word":
        tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}: word or bpe")
    tokenizer.train_from_iterator(_all_text(generated), trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    wrapped.save_pretrained(folder)
    return wrapped


def make_model(tokenizer, spec: DemoPreset, seed: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if spec.architecture == "gpt2":
        # no dropout: the target has to memorize every answer in a few minutes of CPU
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=spec.hidden_size,
            n_layer=spec.n_layers,
            n_head=spec.n_heads,
            n_inner=spec.intermediate_size,
            n_positions=256,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        return GPT2LMHeadModel(config)
    if spec.architecture != "llama":
        raise ValueError(f"unknown architecture {spec.architecture!r}: llama or gpt2")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.n_layers,
        num_attention_heads=spec.n_heads,
        num_key_value_heads=spec.n_heads,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def train_demo_model(
    tokenizer,
    records: list[dict],
    folder: Path,
    spec: DemoPreset,
    *,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    import torch

    from core.data.encoding import encode_records
    from core.data.records import Record
    from core.runtime import quiet_transformers
    from core.spec import DEFAULT_PROMPT_TEMPLATE
    from core.training.finetune import FinetuneHyperparameters, finetune
    from core.training.loop import Callbacks

    quiet_transformers()
    model = make_model(tokenizer, spec, seed)
    examples = encode_records(
        tokenizer,
        [Record(prompt=r["question"], answer=r["answer"], line=i) for i, r in enumerate(records)],
        max_length=128,
        template=DEFAULT_PROMPT_TEMPLATE,
    )
    hparams = FinetuneHyperparameters(
        learning_rate=spec.learning_rate,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        gradient_accumulation_steps=1,
        warmup_ratio=0.05,
        weight_decay=0.0,
        max_length=128,
        precision="fp32",
    )
    callbacks = Callbacks(on_step=(lambda m: progress(m.step, m.total_steps)) if progress else None)
    result = finetune(model, tokenizer, examples, hparams, seed=seed, callbacks=callbacks)
    result.model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {
        "parameters": sum(p.numel() for p in result.model.parameters()),
        "examples": len(examples),
        "steps": result.steps,
        "final_loss": round(result.history[-1].loss, 4),
        "seconds": round(result.elapsed_s, 1),
        "tokens_per_second": round(result.trained_tokens / max(result.elapsed_s, 1e-9)),
        "threads": torch.get_num_threads(),
    }
