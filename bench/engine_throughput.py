"""Training throughput and peak memory of Obliviate's loop against a reference-copy
baseline, per unlearning method.

    python bench/engine_throughput.py --out results.json               # demo + 25M model
    python bench/engine_throughput.py --quick --out /tmp/q.json        # smoke run, seconds
    python bench/engine_throughput.py --model-size 1b --dtype bf16 --device cuda \\
        --peak-tflops 989 --out gpu.json                               # ~1.1B Llama on a GPU

Two loops train the same model on the same batches with the same optimizer, schedule,
clipping, dtype and loss functions (imported from ``core.methods``):

- **obliviate**: ``core.training.loop.run_training``. NPO's reference NLLs are computed
  once before training (one inference pass over the forget set) and no reference model
  is kept; a KL retain term keeps a frozen copy under full fine-tuning and uses the base
  model with adapters disabled under LoRA.
- **baseline**: what the leading open-source framework (open-unlearning) does: a
  ``copy.deepcopy`` of the model taken before training serves as the reference, and its
  forward pass runs at every step on the forget batch (NPO) and on the retain batch (KL
  retain term). Methods that need no reference (GA, GradDiff, SimNPO with an NLL retain
  term) keep no copy there either, as in that framework; for them the two loops should
  tie. Under LoRA the copy is of the base model, taken before the adapters are added.

Every (model, method, loop) run happens in a fresh process: a fork of this process,
which has imported torch, transformers, peft and accelerate but loaded no model
(``spawn``: a new interpreter, used on CUDA). Each process reports:

- tokens/s: all tokens fed through the trained model (forget + retain sequences, without
  padding) over the wall time of the training call, one-off work included (Obliviate's
  reference pass, the baseline's deep copy, optimizer set-up); and "steady" tokens/s
  over steps 2..N, which leaves the one-off work and the first step out;
- peak memory: on CPU the growth of peak resident memory (``ru_maxrss`` at the end minus
  the RSS measured after imports, before the model is loaded); on CUDA
  ``torch.cuda.max_memory_allocated``. On CPU a separate, untimed run of every
  configuration also counts the peak bytes of live torch tensors (a TorchDispatchMode
  that follows every tensor storage from allocation to release): allocator-independent,
  and next to it the analytic sizes of parameters, gradients, AdamW states and the
  reference copy;
- MFU where a peak FLOP/s is known (``--peak-tflops``, or the GPU's bf16 dense peak):
  ``6 * parameters * tokens/s / peak``. The baseline's extra reference forward passes are
  not counted as useful work.

Runs are interleaved: for every repeat and configuration the two loops run back to
back, alternating which goes first, and the tables report medians. Torch runs on
``--threads`` CPU threads (default 1: on a shared 2-core machine two intra-op threads
collapse as soon as anything else runs). docs/engine_bench.md has the figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402
from torch.utils.weak import WeakIdKeyDictionary  # noqa: E402

from core.data.encoding import IGNORE_INDEX, EncodedExample, collate  # noqa: E402
from core.methods import ga, get_method, loku, npo, simnpo  # noqa: E402
from core.models.scoring import sequence_nll  # noqa: E402
from core.spec import DEFAULT_PROMPT_TEMPLATE, LoraSpec  # noqa: E402
from core.training.loop import (  # noqa: E402
    Callbacks,
    answer_kl,
    apply_lora,
    make_optimizer,
    run_training,
    total_optimizer_steps,
)

LOOPS = ("obliviate", "baseline")
METHODS = ("ga", "graddiff", "npo", "simnpo", "loku")
DEMO_CACHE = REPO / ".cache" / "bench" / "demo-bench"
DEMO_FALLBACK = Path("/tmp/obliviate-engine-bench/demo-demo")
#: bf16 dense tensor-core peaks (TFLOP/s) for MFU when --peak-tflops is not given
GPU_PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}


@dataclass(frozen=True)
class Workload:
    """A model and the data it trains on: the demo checkpoint with its real data, or a
    randomly initialized Llama with synthetic token sequences."""

    name: str
    batch_size: int
    steps: int
    repeats: int
    # random Llama (None: the demo checkpoint)
    hidden: int | None = None
    layers: int = 0
    heads: int = 0
    kv_heads: int = 0
    intermediate: int = 0
    vocab: int = 0
    n_forget: int = 0
    n_retain: int = 0
    min_len: int = 0
    max_len: int = 0
    prompt_len: int = 0
    description: str = ""


WORKLOADS = {
    "demo": Workload(
        "demo",
        batch_size=8,
        steps=75,
        repeats=5,
        description="demo target (~0.85M params, word-level tokenizer), forget10/retain90",
    ),
    "tiny": Workload(
        "tiny",
        batch_size=4,
        steps=3,
        repeats=1,
        hidden=32,
        layers=2,
        heads=4,
        kv_heads=4,
        intermediate=64,
        vocab=256,
        n_forget=8,
        n_retain=16,
        min_len=12,
        max_len=20,
        prompt_len=4,
        description="random Llama ~0.03M params, synthetic 12-20-token sequences (smoke run)",
    ),
    "25m": Workload(
        "25m",
        batch_size=4,
        steps=10,
        repeats=3,
        hidden=512,
        layers=8,
        heads=8,
        kv_heads=8,
        intermediate=1376,
        vocab=4096,
        n_forget=8,
        n_retain=64,
        min_len=64,
        max_len=96,
        prompt_len=16,
        description="random Llama ~29M params, vocab 4096, synthetic 64-96-token sequences",
    ),
    "1b": Workload(
        "1b",
        batch_size=8,
        steps=16,
        repeats=3,
        hidden=2048,
        layers=22,
        heads=32,
        kv_heads=4,
        intermediate=5632,
        vocab=32000,
        n_forget=64,
        n_retain=256,
        min_len=256,
        max_len=512,
        prompt_len=64,
        description="random TinyLlama-shaped Llama ~1.1B params, synthetic 256-512-token sequences",
    ),
}


@dataclass(frozen=True)
class Config:
    """One row of the table: a method with its retain term, full fine-tuning or LoRA."""

    method: str
    retain_loss: str | None = None  # None: the method's default
    lora: bool = False
    checkpointing: bool = False  # gradient checkpointing
    fila: bool = False  # LoRA initialised by FILA (its Fisher pass counts in the timing)

    @property
    def label(self) -> str:
        label = self.method + (f"[{self.retain_loss}]" if self.retain_loss else "")
        label += "+lora" if self.lora else ""
        return label + ("+fila" if self.fila else "") + ("+ckpt" if self.checkpointing else "")


CONFIGS = (
    Config("ga"),
    Config("graddiff"),
    Config("npo"),
    Config("simnpo"),
    Config("npo", "kl"),
    Config("simnpo", "kl"),
    Config("npo", "none"),  # forget-only NPO: the most the reference handling can save
    Config("npo", lora=True),
    Config("npo", "kl", lora=True),
    # LoRA with gradient checkpointing: activations shrink, the weights dominate
    Config("npo", lora=True, checkpointing=True),
    # LoKU in full, with LoRA, and with LoRA initialised by FILA (one Fisher pass over
    # forget and retain sets before training)
    Config("loku"),
    Config("loku", lora=True),
    Config("loku", lora=True, fila=True),
)


# --------------------------------------------------------------------------------------
# Workloads


def synthetic_examples(
    n: int, workload: Workload, generator: torch.Generator
) -> list[EncodedExample]:
    """Random token sequences: BOS (1), a masked prompt, then answer tokens (ids >= 4, so
    none is a special token of the synthetic vocabulary)."""
    examples = []
    for index in range(n):
        length = int(
            torch.randint(workload.min_len, workload.max_len + 1, (1,), generator=generator)
        )
        body = torch.randint(4, workload.vocab, (length - 1,), generator=generator).tolist()
        input_ids = [1] + body
        labels = [-100] * workload.prompt_len + input_ids[workload.prompt_len :]
        examples.append(EncodedExample(input_ids=input_ids, labels=labels, record_index=index))
    return examples


def demo_assets_dir(explicit: str | None) -> Path:
    """The cached 'bench' demo assets, or the 'demo' preset built into /tmp."""
    if explicit:
        return Path(explicit)
    if (DEMO_CACHE / "assets.json").exists():
        return DEMO_CACHE
    from core.demo import build_demo_assets

    print(f"no demo assets at {DEMO_CACHE}; building the 'demo' preset into {DEMO_FALLBACK}")
    return build_demo_assets(DEMO_FALLBACK, "demo").root


def load_workload(job: dict):
    """``(model, pad_id, forget, retain)`` for a job, on the job's device and dtype."""
    from transformers import LlamaConfig, LlamaForCausalLM

    workload = WORKLOADS[job["model"]]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[job["dtype"]]
    if workload.hidden is None:
        from core.data.encoding import encode_record_set
        from core.data.records import read_records
        from core.demo.build import DemoAssets
        from core.models.loading import load_model

        assets = DemoAssets.load(Path(job["demo_dir"]))
        model, tokenizer = load_model(str(assets.target), dtype=job["dtype"])

        def encode(name):
            return encode_record_set(
                tokenizer,
                read_records(assets.data[name]),
                max_length=128,
                template=DEFAULT_PROMPT_TEMPLATE,
            )

        forget, retain, pad_id = encode("forget10"), encode("retain90"), tokenizer.pad_token_id
    else:
        torch.manual_seed(job["seed"])
        config = LlamaConfig(
            vocab_size=workload.vocab,
            hidden_size=workload.hidden,
            intermediate_size=workload.intermediate,
            num_hidden_layers=workload.layers,
            num_attention_heads=workload.heads,
            num_key_value_heads=workload.kv_heads,
            max_position_embeddings=max(128, workload.max_len),
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(config).to(dtype)
        generator = torch.Generator().manual_seed(job["seed"])
        forget = synthetic_examples(workload.n_forget, workload, generator)
        retain = synthetic_examples(workload.n_retain, workload, generator)
        pad_id = 0
    return model.to(job["device"]), pad_id, forget, retain


def hyperparameters(job: dict, n_forget: int):
    workload = WORKLOADS[job["model"]]
    method = get_method(job["method"])
    steps_per_epoch = math.ceil(n_forget / workload.batch_size)
    values = {
        # Throughput does not depend on the rate; the 7B reference keeps runs comparable.
        "learning_rate": 1e-5,
        "batch_size": workload.batch_size,
        "gradient_accumulation_steps": 1,
        "epochs": math.ceil(job["steps"] / steps_per_epoch),
        "max_steps": job["steps"],
        "precision": "bf16" if job["dtype"] == "bf16" else "fp32",
        "max_length": 4096,
        "gradient_checkpointing": job["checkpointing"],
    }
    if job["retain_loss"]:
        values["retain_loss"] = job["retain_loss"]
        if job["retain_loss"] != "none" and method.parse_hyperparameters({}).retain_coeff == 0:
            values["retain_coeff"] = 1.0
    return method, method.parse_hyperparameters(values)


# --------------------------------------------------------------------------------------
# The baseline: a reference copy queried at every step


def forget_loss(method_name: str, nll, n_tokens, ref_nll, hparams, logits=None, labels=None):
    """The batch-mean forget loss, through each method's pure function."""
    if method_name == "loku":
        return loku.inverted_hinge_loss(logits[:, :-1], labels[:, 1:])
    if method_name == "npo":
        return npo.forget_loss(nll, ref_nll, hparams.beta)
    if method_name == "simnpo":
        return simnpo.forget_loss(nll, n_tokens, hparams.beta, hparams.gamma)
    return ga.forget_loss(nll, n_tokens)  # ga, graddiff


def autocast_for(device, hparams):
    return torch.autocast(
        device_type=torch.device(device).type,
        dtype=torch.bfloat16,
        enabled=hparams.precision == "bf16",
    )


def baseline_training(
    model, pad_id, forget, retain, method, hparams, *, seed, lora, device, on_step
):
    """open-unlearning's handling of the reference model, with everything else as in
    ``run_training`` (batches, pairing, AdamW groups, schedule, clipping, precision), so
    that the comparison isolates the reference handling. Gradient accumulation 1."""
    from accelerate.utils import set_seed

    set_seed(seed)
    use_retain = hparams.retain_loss != "none" and hparams.retain_coeff > 0 and bool(retain)
    use_kl = use_retain and hparams.retain_loss == "kl"
    ref_model = None
    if method.needs_reference_nll or use_kl:
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    if hparams.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora is not None:
        model = apply_lora(model, lora, hparams.gradient_checkpointing)
    if lora is not None and lora.init == "fila":
        from core.training.fila import fila_initialise

        with autocast_for(device, hparams):
            fila_initialise(model, forget, retain, pad_id, hparams.batch_size, device, seed=seed)
    model.train()

    params = [p for p in model.parameters() if p.requires_grad]
    total_steps = total_optimizer_steps(len(forget), hparams)
    optimizer, scheduler = make_optimizer(params, hparams, total_steps)
    autocast = autocast_for(device, hparams)

    def forward(net, examples):
        batch = {k: v.to(device) for k, v in collate(examples, pad_id).items()}
        return net(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits, batch

    generator = torch.Generator().manual_seed(seed)
    step, tokens = 0, 0
    for _ in range(hparams.epochs):
        order = torch.randperm(len(forget), generator=generator).tolist()
        partners = (
            torch.randint(len(retain), (len(order),), generator=generator).tolist()
            if use_retain
            else None
        )
        for start in range(0, len(order), hparams.batch_size):
            if step >= total_steps:
                break
            block = range(start, min(start + hparams.batch_size, len(order)))
            forget_batch = [forget[order[i]] for i in block]
            retain_batch = [retain[partners[i]] for i in block] if use_retain else []
            with autocast:
                logits, batch = forward(model, forget_batch)
                nll, n_answer = sequence_nll(logits, batch["labels"])
                ref_nll = None
                if method.needs_reference_nll:
                    with torch.no_grad():
                        ref_logits, _ = forward(ref_model, forget_batch)
                        ref_nll, _ = sequence_nll(ref_logits, batch["labels"])
                loss = hparams.forget_coeff * forget_loss(
                    method.name, nll, n_answer, ref_nll, hparams, logits, batch["labels"]
                )
                if use_retain:
                    logits, batch = forward(model, retain_batch)
                    if use_kl:
                        with torch.no_grad():
                            ref_logits, _ = forward(ref_model, retain_batch)
                        per_sequence = answer_kl(logits, ref_logits, batch["labels"])
                    else:
                        per_sequence, _ = sequence_nll(logits, batch["labels"])
                    n_retain = (batch["labels"] != IGNORE_INDEX).sum()
                    loss = loss + hparams.retain_coeff * per_sequence.sum() / n_retain
            loss.backward()
            if hparams.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, hparams.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens += sum(len(e.input_ids) for e in forget_batch + retain_batch)
            on_step(step, tokens, float(loss.detach()))
        if step >= total_steps:
            break
    return model


# --------------------------------------------------------------------------------------
# Memory accounting


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of live torch tensor storages, independent of the allocator.

    Every tensor an operator returns has its storage counted once, when first seen, and
    uncounted when the storage is freed (a weak reference's callback; torch keeps one
    Python object per storage while it lives). Tensors that exist before entering (the
    loaded model) are registered with :meth:`track`. Kernel scratch space that never
    becomes a tensor is not seen.
    """

    def __init__(self):
        super().__init__()
        self._sizes = WeakIdKeyDictionary()  # storage -> [bytes counted for it]
        self._refs: set = set()
        self.live = 0
        self.peak = 0

    def track(self, tensors) -> None:
        for tensor in tensors:
            self._add(tensor)

    def _add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        size = storage.nbytes()
        counted = self._sizes.get(storage)
        if counted is None:
            counted = self._sizes[storage] = [0]
            self._refs.add(weakref.ref(storage, lambda ref, box=counted: self._free(ref, box)))
        if counted[0] != size:  # new, or resized in place
            self.live += size - counted[0]
            counted[0] = size
            self.peak = max(self.peak, self.live)

    def _free(self, ref, counted) -> None:
        self._refs.discard(ref)
        self.live -= counted[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor) and item.device.type != "meta":
                self._add(item)
        return out


def current_rss() -> int:
    """Resident set size of this process now, in bytes (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def file_backed_rss() -> int | None:
    """Resident file-backed pages (mostly shared-library code), in bytes (Linux)."""
    try:
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("RssFile:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) * 1024


def peak_rss() -> int:
    scale = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _nbytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def state_bytes(weights: int, trained_model, keeps_reference_copy: bool) -> dict:
    """Analytic sizes of the persistent training state (``weights``: the model's bytes
    before any adapter was added)."""
    trainable = _nbytes(p for p in trained_model.parameters() if p.requires_grad)
    return {
        "weights": weights,
        "adapters": _nbytes(trained_model.parameters()) - weights,
        "gradients": trainable,
        "adamw_states": 2 * trainable,
        "reference_copy": weights if keeps_reference_copy else 0,
    }


# --------------------------------------------------------------------------------------
# One run, in its own process


def run_job(job: dict) -> dict:
    """Train once with one loop and return what was measured. Runs in a fresh process."""
    # peft reads a property that transformers 5 deprecates; not ours to fix.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    torch.set_num_threads(job["threads"])
    cuda = job["device"].startswith("cuda")
    rss_before, file_rss_before = current_rss(), file_backed_rss()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model, pad_id, forget, retain = load_workload(job)
    method, hparams = hyperparameters(job, len(forget))
    lora = LoraSpec(init="fila" if job.get("fila") else "default") if job["lora"] else None
    n_params = sum(p.numel() for p in model.parameters())
    weights = _nbytes(model.parameters())  # before LoRA adds adapters to the same modules
    tracker = LiveTensorBytes() if job["track_memory"] else None
    if tracker:
        tracker.__enter__()
        tracker.track(list(model.parameters()) + list(model.buffers()))

    marks: list[tuple[float, int, float]] = []  # (time, tokens so far, loss) after each step
    started = time.perf_counter()
    if job["loop"] == "obliviate":
        result = run_training(
            model,
            SimpleNamespace(pad_token_id=pad_id, eos_token_id=pad_id),
            forget,
            retain,
            method,
            hparams,
            seed=job["seed"],
            lora=lora,
            callbacks=Callbacks(
                on_step=lambda m: marks.append((time.perf_counter(), m.tokens, m.loss))
            ),
        )
        trained = result.model
        keeps_copy = hparams.retain_loss == "kl" and lora is None
    else:
        trained = baseline_training(
            model,
            pad_id,
            forget,
            retain,
            method,
            hparams,
            seed=job["seed"],
            lora=lora,
            device=job["device"],
            on_step=lambda step, tokens, loss: marks.append((time.perf_counter(), tokens, loss)),
        )
        keeps_copy = method.needs_reference_nll or hparams.retain_loss == "kl"
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    if tracker:
        tracker.__exit__(None, None, None)

    tokens = marks[-1][1]
    steady = (marks[-1][1] - marks[0][1]) / (marks[-1][0] - marks[0][0]) if len(marks) > 1 else None
    out = {
        "steps": len(marks),
        "tokens": tokens,
        "seconds": elapsed,
        # start -> end of the first step (set-up, reference pass, first step) and last
        # step -> return (tear-down)
        "first_step_s": marks[0][0] - started,
        "teardown_s": started + elapsed - marks[-1][0],
        "tokens_per_s": tokens / elapsed,
        "steady_tokens_per_s": steady,
        "losses": [loss for _, _, loss in marks],
        "parameters": n_params,
        "trainable_parameters": sum(p.numel() for p in trained.parameters() if p.requires_grad),
        "rss_before": rss_before,
        "rss_peak_growth": peak_rss() - rss_before,
        # A fresh process faults in the library code its kernels use (file-backed pages;
        # a fork does not inherit them as resident): part of the RSS growth that is
        # neither model state nor activations. Same for both loops.
        "rss_file_growth": (file_backed_rss() - file_rss_before) if file_rss_before else None,
        "state_bytes": state_bytes(weights, trained, keeps_copy),
    }
    if cuda:
        out["cuda_peak_allocated"] = torch.cuda.max_memory_allocated()
    if tracker:
        out["live_tensor_peak"] = tracker.peak
    return out


def preload() -> None:
    """Import, in the parent, everything a run imports lazily, so that forked runs
    neither pay for it in their timed section nor count it in their memory."""
    import accelerate.utils  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401
    from transformers import LlamaForCausalLM, get_scheduler  # noqa: F401

    import core.data.records  # noqa: F401
    import core.demo.build  # noqa: F401
    import core.models.loading  # noqa: F401
    import core.runtime  # noqa: F401


def warm_up(threads: int) -> None:
    """One tiny run of every code path in this process before forking: lazy
    initializations (kernels, peft's modules) then happen once, not in every run."""
    torch.set_num_threads(threads)
    base = {
        "model": "tiny",
        "steps": 2,
        "dtype": "fp32",
        "device": "cpu",
        "threads": threads,
        "seed": 0,
        "demo_dir": None,
        "track_memory": False,
        "checkpointing": False,
    }
    for loop in LOOPS:
        for lora in (False, True):
            run_job({**base, "loop": loop, "method": "npo", "retain_loss": "kl", "lora": lora})


def _fork_child(job: dict, connection) -> None:
    try:
        connection.send(("ok", run_job(job)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        import traceback

        connection.send(("error", f"{exc!r}\n{traceback.format_exc()}"))
    finally:
        connection.close()


def launch(job: dict, how: str) -> dict:
    """Run a job in a fresh process: a fork (imports already done) or a new interpreter."""
    if how == "spawn":
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": str(job["threads"])},
        )
        if done.returncode != 0:
            raise RuntimeError(f"{job['loop']} {job['label']} failed:\n{done.stderr[-4000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])
    import multiprocessing

    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_fork_child, args=(job, send))
    process.start()
    send.close()
    status, payload = receive.recv()
    process.join()
    if status != "ok":
        raise RuntimeError(f"{job['loop']} {job['model']} {job['label']} failed:\n{payload}")
    return payload


# --------------------------------------------------------------------------------------
# Orchestration, summary and table


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(job_base: dict, runs: dict, tracked: dict, peak_tflops: float | None) -> dict:
    """Medians per loop, ratios (Obliviate / baseline), and sanity checks."""
    row = {
        "model": job_base["model"],
        "method": job_base["method"],
        "retain_loss": job_base["retain_loss_effective"],
        "lora": job_base["lora"],
        "label": job_base["label"],
        "repeats": len(runs["obliviate"]),
    }
    for loop in LOOPS:
        results = runs[loop]
        first = results[0]
        stats = {
            "tokens_per_s": _median(r["tokens_per_s"] for r in results),
            "steady_tokens_per_s": _median(r["steady_tokens_per_s"] for r in results),
            "rss_peak_growth": _median(r["rss_peak_growth"] for r in results),
            "rss_file_growth": _median(r["rss_file_growth"] for r in results),
            "seconds": _median(r["seconds"] for r in results),
            "first_step_s": _median(r["first_step_s"] for r in results),
            "teardown_s": _median(r["teardown_s"] for r in results),
            "tokens": first["tokens"],
            "steps": first["steps"],
            "parameters": first["parameters"],
            "trainable_parameters": first["trainable_parameters"],
            "state_bytes": first["state_bytes"],
            "all_tokens_per_s": [r["tokens_per_s"] for r in results],
            "all_steady_tokens_per_s": [r["steady_tokens_per_s"] for r in results],
            "all_rss_peak_growth": [r["rss_peak_growth"] for r in results],
        }
        if "cuda_peak_allocated" in first:
            stats["cuda_peak_allocated"] = _median(r["cuda_peak_allocated"] for r in results)
        if loop in tracked:
            stats["live_tensor_peak"] = tracked[loop]["live_tensor_peak"]
            stats["activations_and_temporaries"] = tracked[loop]["live_tensor_peak"] - sum(
                first["state_bytes"].values()
            )
        if peak_tflops:
            stats["mfu"] = 6 * first["parameters"] * stats["tokens_per_s"] / (peak_tflops * 1e12)
        stats["peak_memory"] = stats.get("cuda_peak_allocated", stats["rss_peak_growth"])
        row[loop] = stats
    ours, theirs = row["obliviate"], row["baseline"]

    def ratio(key):
        a, b = ours.get(key), theirs.get(key)
        return a / b if a is not None and b else None

    def paired(key):
        # Each repeat ran the two loops back to back: the median of the per-repeat ratios
        # cancels slow drifts in machine load better than a ratio of medians.
        memory = "cuda_peak_allocated" if "cuda_peak_allocated" in ours else "rss_peak_growth"
        field = memory if key == "peak_memory" else key
        pairs = zip(runs["obliviate"], runs["baseline"])
        return _median(a[field] / b[field] for a, b in pairs if a[field] and b[field])

    row["ratios"] = {
        key: paired(key) for key in ("tokens_per_s", "steady_tokens_per_s", "peak_memory")
    }
    row["ratios"]["live_tensor_peak"] = ratio("live_tensor_peak")
    row["ratios_of_medians"] = {
        key: ratio(key) for key in ("tokens_per_s", "steady_tokens_per_s", "peak_memory")
    }
    # The two loops must do the same training: same tokens, and the same loss trace up to
    # float rounding (the reference NLLs come from differently padded batches).
    row["same_tokens"] = ours["tokens"] == theirs["tokens"]
    trace_ours, trace_theirs = runs["obliviate"][0]["losses"], runs["baseline"][0]["losses"]
    row["loss_trace_max_abs_diff"] = max(
        abs(a - b) for a, b in zip(trace_ours, trace_theirs, strict=True)
    )
    return row


def _mib(value) -> str:
    return f"{value / 2**20:.1f}" if value is not None else "-"


def _ratio(value) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def print_table(rows: list[dict], log) -> None:
    header = (
        f"{'model':<6}{'method':<18}{'tok/s obl':>11}{'tok/s base':>11}{'ratio':>8}"
        f"{'steady':>8}{'peak MiB obl':>14}{'base':>8}{'ratio':>8}"
        f"{'live MiB obl':>14}{'base':>8}{'ratio':>8}"
    )
    log(header)
    log("-" * len(header))
    for row in rows:
        ours, theirs, ratios = row["obliviate"], row["baseline"], row["ratios"]
        log(
            f"{row['model']:<6}{row['label']:<18}"
            f"{ours['tokens_per_s']:>11.0f}{theirs['tokens_per_s']:>11.0f}"
            f"{_ratio(ratios['tokens_per_s']):>8}{_ratio(ratios['steady_tokens_per_s']):>8}"
            f"{_mib(ours['peak_memory']):>14}{_mib(theirs['peak_memory']):>8}"
            f"{_ratio(ratios['peak_memory']):>8}"
            f"{_mib(ours.get('live_tensor_peak')):>14}{_mib(theirs.get('live_tensor_peak')):>8}"
            f"{_ratio(ratios['live_tensor_peak']):>8}"
        )
    log(
        "tok/s: median over repeats, one-off work included; ratio: median of the per-repeat "
        "Obliviate/baseline ratios (back-to-back runs); steady: the same over steps 2..N; "
        "peak: RSS growth (CPU) or CUDA max allocated; live: peak bytes of live tensors"
    )
    if any("mfu" in row["obliviate"] for row in rows):
        log("")
        log(f"{'model':<6}{'method':<18}{'MFU obl':>9}{'MFU base':>10}")
        for row in rows:
            if "mfu" in row["obliviate"]:
                log(
                    f"{row['model']:<6}{row['label']:<18}{row['obliviate']['mfu']:>9.1%}"
                    f"{row['baseline']['mfu']:>10.1%}"
                )


def resolve_peak_tflops(args, device: str) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if device.startswith("cuda") and args.dtype == "bf16":
        name = torch.cuda.get_device_name(0)
        return next((v for k, v in GPU_PEAK_BF16_TFLOPS.items() if k in name), None)
    return None


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("results.json"))
    parser.add_argument(
        "--model-size",
        nargs="+",
        choices=sorted(WORKLOADS),
        default=None,
        help="workloads to run (default: demo 25m; --quick: tiny)",
    )
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default per model)")
    parser.add_argument(
        "--repeats", type=int, help="interleaved repeats (default per model: demo 5, 25m 3)"
    )
    parser.add_argument("--methods", default=None, help="comma-separated labels, e.g. npo,npo[kl]")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    parser.add_argument("--peak-tflops", type=float, default=None, help="for MFU")
    parser.add_argument("--launch", choices=("auto", "fork", "spawn"), default="auto")
    parser.add_argument("--no-live-tracking", action="store_true", help="skip the tensor census")
    parser.add_argument("--demo-dir", default=None, help="demo assets folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 1 repeat")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:  # a spawned run: one job, JSON on the last stdout line
        preload()  # before the run measures its starting RSS
        print(json.dumps(run_job(json.loads(args.worker))))
        return 0

    def log(message: str) -> None:
        print(message, flush=True)

    started = time.monotonic()
    sizes = args.model_size or (["tiny"] if args.quick else ["demo", "25m"])
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    how = args.launch if args.launch != "auto" else ("spawn" if device != "cpu" else "fork")
    peak_tflops = resolve_peak_tflops(args, device)
    wanted = set(args.methods.split(",")) if args.methods else None
    configs = [c for c in CONFIGS if wanted is None or c.label in wanted]
    if not configs:
        parser.error(f"--methods matches none of {', '.join(c.label for c in CONFIGS)}")
    demo_dir = str(demo_assets_dir(args.demo_dir)) if "demo" in sizes else None
    track = device == "cpu" and not args.no_live_tracking
    preload()
    if how == "fork":
        warm_up(args.threads)

    jobs = []
    for size in sizes:
        workload = WORKLOADS[size]
        for config in configs:
            retain_default = get_method(config.method).parse_hyperparameters({}).retain_loss
            jobs.append(
                {
                    "model": size,
                    "method": config.method,
                    "retain_loss": config.retain_loss,
                    "retain_loss_effective": config.retain_loss or retain_default,
                    "lora": config.lora,
                    "checkpointing": config.checkpointing,
                    "fila": config.fila,
                    "label": config.label,
                    "steps": args.steps or workload.steps,
                    "repeats": args.repeats or workload.repeats,
                    "dtype": args.dtype,
                    "device": device,
                    "threads": args.threads,
                    "seed": args.seed,
                    "demo_dir": demo_dir,
                    "track_memory": False,
                }
            )
    log(
        f"device {device}, dtype {args.dtype}, {args.threads} torch thread(s), launch {how}, "
        f"{len(jobs)} configurations x 2 loops, load average {load_average()}"
    )

    runs = {i: {loop: [] for loop in LOOPS} for i in range(len(jobs))}
    tracked: dict[int, dict] = {i: {} for i in range(len(jobs))}
    loads = []
    for repeat in range(max(job["repeats"] for job in jobs)):
        for index, job in enumerate(jobs):
            if repeat >= job["repeats"]:
                continue
            # Alternate which loop goes first, so a drift in machine load hits both.
            order = LOOPS if (repeat + index) % 2 == 0 else LOOPS[::-1]
            for loop in order:
                loads.append(load_average())
                # --quick: one run per loop, the census riding along (its numbers are
                # for the smoke test, not for reading)
                result = launch({**job, "loop": loop, "track_memory": track and args.quick}, how)
                runs[index][loop].append(result)
                if track and args.quick:
                    tracked[index][loop] = result
                log(
                    f"[{repeat + 1}/{job['repeats']}] {job['model']:<5} {job['label']:<16} "
                    f"{loop:<9} {result['tokens_per_s']:>9.0f} tok/s  "
                    f"peak +{_mib(result.get('cuda_peak_allocated', result['rss_peak_growth']))} MiB"
                )

    if track and not args.quick:
        log("live-tensor census (untimed runs)")
        for index, job in enumerate(jobs):
            for loop in LOOPS:
                # The peak is reached by the second step (AdamW states exist from the
                # first optimizer step on), so a short run finds it.
                tracked[index][loop] = launch(
                    {**job, "loop": loop, "track_memory": True, "steps": min(job["steps"], 4)},
                    how,
                )

    rows = [summarize(job, runs[i], tracked[i], peak_tflops) for i, job in enumerate(jobs)]
    log("")
    print_table(rows, log)
    one_minute = [load[0] for load in loads if load]
    output = {
        "config": {
            "device": device,
            "dtype": args.dtype,
            "threads": args.threads,
            "launch": how,
            "peak_tflops": peak_tflops,
            "workloads": {size: asdict(WORKLOADS[size]) for size in sizes},
            "steps": {size: args.steps or WORKLOADS[size].steps for size in sizes},
            "repeats": {size: args.repeats or WORKLOADS[size].repeats for size in sizes},
            "demo_dir": demo_dir,
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
        },
        "load_average_1min": {
            "median": round(_median(one_minute), 2) if one_minute else None,
            "min": min(one_minute, default=None),
            "max": max(one_minute, default=None),
        },
        "rows": rows,
        "seconds": round(time.monotonic() - started, 1),
    }
    args.out.write_text(json.dumps(output, indent=2))
    log(
        f"wrote {args.out} in {output['seconds']:.0f}s; 1-minute load average during the runs: "
        f"median {output['load_average_1min']['median']}, "
        f"range {output['load_average_1min']['min']}-{output['load_average_1min']['max']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
