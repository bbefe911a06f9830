"""The SimNPO paper's synthetic Markov-chain experiment: do NPO and SimNPO forget short
and long forget sequences evenly?

    python bench/markov.py --out results.json --plot markov.png [--seeds 3] [--quick]

Data. 10 states; three disjoint subsets, each with its own Markov chain: retain {0,1,2},
forget-1 {3,4,5}, forget-2 {6,7,8}; state 9 belongs to none. Every row of a subset's
transition matrix puts 0.8/3 on each in-subset state and 0.2/7 on each of the other 7
states (the rows already sum to 1; they are normalized anyway). All rows of one chain
being equal, the next state depends on which chain a sequence comes from, not on the
current state: the model has to recognise the chain from the context. The initial state
is drawn uniformly from the subset's own three states, so the first token names the chain
and the Bayes-optimal next-state distribution at every later position is the true row.
10,000 retain and 5,000 sequences of each forget set, split 80/20 into train/test.
Two settings: ``equal_length`` (every sequence has 20 states) and ``short_forget2``
(forget-2 sequences have 5 states, forget-1 and retain keep 20).

Models. A 4-layer, 128-wide, 4-head pre-LayerNorm GPT decoder over the 10 states
(nanoGPT-shaped, ~0.8M parameters). The *pretrained* model sees retain + forget-1 +
forget-2, the *retrained* oracle sees retain only (AdamW lr 5e-4, batch 128, token-mean
NLL). The paper trains 5 epochs; the default here is 2 (``--epochs 5`` for the paper's)
to keep a run within ~10 minutes on a shared 2-core machine. Pretraining dominates the
runtime and has converged by then: per-token KL to the true rows is below 0.01 nats
after 2 epochs, as after 5.

Unlearning. NPO and SimNPO (beta 1, gamma 0, AdamW lr 5e-4, batch 4, 50 iterations, no
retain term) on forget-1 and forget-2 together, batches drawn from their union in the
same order for both methods. The losses are ``core.methods.npo.forget_loss`` and
``core.methods.simnpo.forget_loss`` on per-sequence summed NLLs from
``core.models.scoring.sequence_nll``; NPO's reference NLLs are the pretrained model's,
computed once before unlearning.

Measures, after every iteration, on the first 200 test sequences of each split (their
KL agrees with the whole test split's to ~2%, at a tenth of the cost): the per-token
KL(true row || model) (the model's excess NLL over the chain's own entropy; forgetting =
rising towards the retrained model's level on the forget splits, utility = staying low
on retain) and KL(retrained || model). Also each forget sample's gradient weight
``w_i = -B * d(loss)/d(nll_i)`` (autograd through the shared loss, so no formula is
restated here); ``w_i * n_tokens_i`` is how much of the update that sample drives (its
"gradient mass"). docs/markov.md has the measured figures and what they show.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data.encoding import IGNORE_INDEX  # noqa: E402
from core.methods import npo, simnpo  # noqa: E402
from core.models.scoring import sequence_nll  # noqa: E402

N_STATES = 10
SUBSETS: dict[str, tuple[int, ...]] = {
    "retain": (0, 1, 2),
    "forget1": (3, 4, 5),
    "forget2": (6, 7, 8),
}
IN_SUBSET_MASS = 0.8
SPLITS = tuple(SUBSETS)
FORGET_SPLITS = ("forget1", "forget2")
METHODS = ("npo", "simnpo")
# Sequence length (states) of each subset, per setting.
SETTINGS: dict[str, dict[str, int]] = {
    "equal_length": {"retain": 20, "forget1": 20, "forget2": 20},
    "short_forget2": {"retain": 20, "forget1": 20, "forget2": 5},
}


@dataclass(frozen=True)
class Config:
    n_retain: int = 10_000
    n_forget: int = 5_000  # per forget set
    test_fraction: float = 0.2
    eval_size: int = 200  # test sequences per split scored after every iteration
    width: int = 128
    layers: int = 4
    heads: int = 4
    pretrain_lr: float = 5e-4
    pretrain_batch: int = 128
    pretrain_epochs: int = 2  # the paper's 5 with --epochs 5; see the module docstring
    unlearn_lr: float = 5e-4
    unlearn_batch: int = 4
    unlearn_iters: int = 50
    beta: float = 1.0
    gamma: float = 0.0  # SimNPO margin


# Smoke run: every code path, a model too small and briefly trained to mean anything.
QUICK = Config(
    n_retain=400,
    n_forget=200,
    eval_size=40,
    width=32,
    layers=2,
    heads=2,
    pretrain_epochs=1,
    unlearn_iters=4,
)


# ----------------------------------------------------------------------------- data


def transition_matrix(subset: tuple[int, ...], n_states: int = N_STATES) -> np.ndarray:
    """The subset's chain: every row puts 0.8/|S| on each in-subset state and
    0.2/(n-|S|) on each other state, then rows are normalized."""
    row = np.full(n_states, (1.0 - IN_SUBSET_MASS) / (n_states - len(subset)))
    row[list(subset)] = IN_SUBSET_MASS / len(subset)
    matrix = np.tile(row, (n_states, 1))
    return matrix / matrix.sum(axis=1, keepdims=True)


def sample_sequences(
    matrix: np.ndarray, initial_states: tuple[int, ...], n: int, length: int, rng
) -> np.ndarray:
    """``[n, length]`` state sequences: the first state uniform over ``initial_states``,
    each next one drawn from the current state's row."""
    sequences = np.empty((n, length), dtype=np.int64)
    sequences[:, 0] = rng.choice(initial_states, size=n)
    cumulative = matrix.cumsum(axis=1)
    for t in range(1, length):
        u = rng.random((n, 1))
        next_state = (u > cumulative[sequences[:, t - 1]]).sum(axis=1)
        # (a cumulative row can end a rounding error below 1)
        sequences[:, t] = np.minimum(next_state, matrix.shape[0] - 1)
    return sequences


@dataclass
class Subset:
    name: str
    matrix: torch.Tensor  # [S, S] true transition matrix
    train: torch.Tensor  # [N_train, L]
    test: torch.Tensor  # [N_test, L]


def make_subset(name: str, n: int, length: int, cfg: Config, seed: int) -> Subset:
    # One stream per (seed, subset, length): forget-1 and retain are the same sequences
    # in both settings, so the settings differ only in forget-2.
    rng = np.random.default_rng([seed, SPLITS.index(name), length])
    matrix = transition_matrix(SUBSETS[name])
    sequences = torch.from_numpy(sample_sequences(matrix, SUBSETS[name], n, length, rng))
    n_test = round(n * cfg.test_fraction)
    return Subset(name, torch.from_numpy(matrix).float(), sequences[n_test:], sequences[:n_test])


def pad(sequences: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to one length: ``(input_ids, labels)`` with labels ``IGNORE_INDEX`` past
    each sequence's end. Causal attention keeps real positions blind to the padding."""
    length = max(s.shape[1] for s in sequences)
    ids = torch.cat([F.pad(s, (0, length - s.shape[1]), value=0) for s in sequences])
    labels = torch.cat([F.pad(s, (0, length - s.shape[1]), value=IGNORE_INDEX) for s in sequences])
    return ids, labels


# ---------------------------------------------------------------------------- model


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_attn = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.ln_attn(x)).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.ln_mlp(x))


class StateGPT(nn.Module):
    """A GPT decoder whose vocabulary is the chain's states; returns next-state logits."""

    def __init__(self, cfg: Config, max_length: int = 20):
        super().__init__()
        self.state_embedding = nn.Embedding(N_STATES, cfg.width)
        self.position_embedding = nn.Embedding(max_length, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads) for _ in range(cfg.layers))
        self.ln_final = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, N_STATES, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.state_embedding(ids) + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_final(x))


def pretrain(subsets: list[Subset], cfg: Config, seed: int) -> StateGPT:
    """Token-mean NLL on the subsets' train sequences (AdamW, constant lr)."""
    torch.manual_seed(seed)  # same initialization for every model of a seed
    model = StateGPT(cfg)
    ids, labels = pad([s.train for s in subsets])
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_lr)
    shuffle = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(cfg.pretrain_epochs):
        for batch in torch.randperm(len(ids), generator=shuffle).split(cfg.pretrain_batch):
            nll, n_tokens = sequence_nll(model(ids[batch]), labels[batch])
            loss = nll.sum() / n_tokens.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


# ----------------------------------------------------------------------- evaluation


@torch.no_grad()
def next_state_logprobs(model: StateGPT, ids: torch.Tensor, chunk: int = 250) -> torch.Tensor:
    """``[N, L-1, S]``: the model's log-distribution of states 1..L-1 given their prefix."""
    return torch.cat([F.log_softmax(model(c)[:, :-1].float(), dim=-1) for c in ids.split(chunk)])


def kl_per_token(target_logprobs: torch.Tensor, model_logprobs: torch.Tensor) -> float:
    """Mean over positions of KL(target || model), in nats."""
    kl = (target_logprobs.exp() * (target_logprobs - model_logprobs)).sum(dim=-1)
    return kl.mean().item()


@dataclass
class EvalSplit:
    ids: torch.Tensor
    true_logprobs: torch.Tensor  # log of the true row of each prefix's last state
    retrained_logprobs: torch.Tensor


def eval_splits(subsets: list[Subset], retrained: StateGPT, size: int) -> dict[str, EvalSplit]:
    splits = {}
    for s in subsets:
        ids = s.test[:size]
        splits[s.name] = EvalSplit(
            ids, s.matrix.log()[ids[:, :-1]], next_state_logprobs(retrained, ids)
        )
    return splits


# kl_true_early scores only the predictions of states 1..4, the ones a 5-state sequence
# has: it tells "short sequences forget faster" apart from "early positions move faster".
EARLY_PREDICTIONS = 4
METRICS = ("kl_true", "kl_retrained", "kl_true_early")


def evaluate(model: StateGPT, splits: dict[str, EvalSplit]) -> dict[str, dict[str, float]]:
    result: dict[str, dict[str, float]] = {metric: {} for metric in METRICS}
    for name, split in splits.items():
        logprobs = next_state_logprobs(model, split.ids)
        early = slice(0, EARLY_PREDICTIONS)
        result["kl_true"][name] = kl_per_token(split.true_logprobs, logprobs)
        result["kl_retrained"][name] = kl_per_token(split.retrained_logprobs, logprobs)
        result["kl_true_early"][name] = kl_per_token(
            split.true_logprobs[:, early], logprobs[:, early]
        )
    return result


# ------------------------------------------------------------------------ unlearning


def forget_loss(method: str, nll, n_tokens, ref_nll, cfg: Config) -> torch.Tensor:
    if method == "npo":
        return npo.forget_loss(nll, ref_nll, cfg.beta)
    return simnpo.forget_loss(nll, n_tokens, cfg.beta, cfg.gamma)


def per_sample_weights(loss: torch.Tensor, nll: torch.Tensor) -> torch.Tensor:
    """``w_i = -B * d(loss)/d(nll_i)``: the factor on sample i's gradient-ascent direction
    ``grad(-nll_i)`` in the batch-mean update, read off the loss by autograd."""
    (dloss_dnll,) = torch.autograd.grad(loss, nll, retain_graph=True)
    return -len(nll) * dloss_dnll.detach()


def unlearn(
    pretrained: StateGPT,
    method: str,
    forget: dict[str, torch.Tensor],
    order: torch.Tensor,
    splits: dict[str, EvalSplit],
    cfg: Config,
) -> dict:
    """Run ``cfg.unlearn_iters`` steps of ``method`` on the forget batches given by
    ``order``; evaluate before the first step and after each one."""
    model = copy.deepcopy(pretrained).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.unlearn_lr)
    curves = {metric: {name: [] for name in SPLITS} for metric in METRICS}
    # Per iteration and forget set: samples in the batch, their summed w_i, and their
    # summed gradient mass w_i * n_i.
    weights = {name: {"samples": [], "weight": [], "mass": []} for name in FORGET_SPLITS}

    def record_eval():
        model.eval()
        for metric, values in evaluate(model, splits).items():
            for name, value in values.items():
                curves[metric][name].append(value)
        model.train()

    record_eval()
    for step in range(cfg.unlearn_iters):
        batch = order[step * cfg.unlearn_batch : (step + 1) * cfg.unlearn_batch]
        nll, n_tokens = sequence_nll(model(forget["ids"][batch]), forget["labels"][batch])
        loss = forget_loss(method, nll, n_tokens, forget["ref_nll"][batch], cfg)
        weight = per_sample_weights(loss, nll)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for k, name in enumerate(FORGET_SPLITS):
            in_set = forget["subset"][batch] == k
            weights[name]["samples"].append(int(in_set.sum()))
            weights[name]["weight"].append(weight[in_set].sum().item())
            weights[name]["mass"].append((weight * n_tokens)[in_set].sum().item())
        record_eval()
    return {"curves": curves, "gradient_weights": weights}


# ---------------------------------------------------------------------------- a seed


def run_seed(cfg: Config, seed: int, log) -> dict:
    retain = make_subset("retain", cfg.n_retain, 20, cfg, seed)
    log(f"seed {seed}: training the retrained oracle (retain only)")
    retrained = pretrain([retain], cfg, seed)
    result = {}
    for setting, lengths in SETTINGS.items():
        forget = [make_subset(n, cfg.n_forget, lengths[n], cfg, seed) for n in FORGET_SPLITS]
        subsets = [retain, *forget]
        log(f"seed {seed} {setting}: pretraining on retain + forget-1 + forget-2")
        pretrained = pretrain(subsets, cfg, seed)
        splits = eval_splits(subsets, retrained, cfg.eval_size)

        ids, labels = pad([s.train for s in forget])
        with torch.no_grad():
            ref_nll, _ = sequence_nll(pretrained(ids), labels)
        forget_data = {
            "ids": ids,
            "labels": labels,
            "ref_nll": ref_nll,
            "subset": torch.cat([torch.full((len(s.train),), k) for k, s in enumerate(forget)]),
        }
        order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))

        entry = {
            "reference": {
                "pretrained": evaluate(pretrained, splits),
                "retrained": evaluate(retrained, splits),
            },
            "methods": {},
        }
        for method in METHODS:
            log(f"seed {seed} {setting}: unlearning with {method}")
            entry["methods"][method] = unlearn(pretrained, method, forget_data, order, splits, cfg)
        result[setting] = entry
    return result


# ------------------------------------------------------------------------- summary


def progress_curves(run: dict, method: str, metric: str = "kl_true") -> dict[str, np.ndarray]:
    """Forgetting progress of each forget split after every iteration: 0 at the
    pretrained model's KL to the true rows, 1 at the retrained oracle's."""
    pretrained = run["reference"]["pretrained"][metric]
    retrained = run["reference"]["retrained"][metric]
    return {
        split: (np.array(run["methods"][method]["curves"][metric][split]) - pretrained[split])
        / (retrained[split] - pretrained[split])
        for split in FORGET_SPLITS
    }


def method_statistics(run: dict, method: str) -> dict[str, float]:
    """The scalar outcomes of one unlearning run (one seed, one setting, one method)."""
    result = run["methods"][method]
    stats = {
        f"{metric}/{split}": result["curves"][metric][split][-1]
        for metric in METRICS
        for split in SPLITS
    }
    progress = progress_curves(run, method)
    stats["progress/forget1"] = progress["forget1"][-1]
    stats["progress/forget2"] = progress["forget2"][-1]
    stats["progress_ratio"] = progress["forget1"][-1] / progress["forget2"][-1]
    # Evenness at matched forgetting: the first iteration where the two forget sets are,
    # on average, at the oracle's level. A method that overshoots can look even at its
    # last iterate only because both sets are far past the oracle.
    reached = np.flatnonzero((progress["forget1"] + progress["forget2"]) / 2 >= 1)
    matched = reached[0] if len(reached) else None
    early_forget1 = progress_curves(run, method, "kl_true_early")["forget1"]
    for key, curve in (
        ("matched_progress/forget1", progress["forget1"]),
        ("matched_progress/forget2", progress["forget2"]),
        ("matched_progress/forget1_first4", early_forget1),
    ):
        stats[key] = curve[matched] if matched is not None else math.nan
    stats["matched_iteration"] = float(matched) if matched is not None else math.nan
    stats["matched_progress_ratio"] = (
        stats["matched_progress/forget1"] / stats["matched_progress/forget2"]
    )
    weights = result["gradient_weights"]
    for split in FORGET_SPLITS:
        samples = sum(weights[split]["samples"]) or math.nan  # a short run may draw none
        stats[f"mean_weight/{split}"] = sum(weights[split]["weight"]) / samples
        stats[f"mean_mass/{split}"] = sum(weights[split]["mass"]) / samples
    stats["forget1_mass_share"] = stats["mean_mass/forget1"] / (
        stats["mean_mass/forget1"] + stats["mean_mass/forget2"]
    )
    return stats


def mean_spread(values) -> dict[str, float]:
    """Mean, sample std, min and max over the seeds where the value exists (``n``);
    None (JSON null) where it exists in none."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "min": float(values.min()),
        "max": float(values.max()),
        "n": len(values),
    }


def summarize(per_seed: list[dict]) -> dict:
    """``{setting: {"reference"|"methods": {model: {statistic: mean_spread}}}}``."""
    summary = {}
    for setting in SETTINGS:
        runs = [seed_result[setting] for seed_result in per_seed]
        reference = {
            model: {
                f"{metric}/{split}": mean_spread(
                    [r["reference"][model][metric][split] for r in runs]
                )
                for metric in METRICS
                for split in SPLITS
            }
            for model in ("pretrained", "retrained")
        }
        methods = {}
        for method in METHODS:
            per_run = [method_statistics(r, method) for r in runs]
            methods[method] = {key: mean_spread([s[key] for s in per_run]) for key in per_run[0]}
        summary[setting] = {"reference": reference, "methods": methods}
    return summary


def format_table(summary: dict, n_seeds: int) -> str:
    spread = n_seeds > 1

    def cell(stat: dict, digits: int = 3) -> str:
        if stat["n"] == 0:
            return "n/a"
        text = f"{stat['mean']:.{digits}f}" + (f"±{stat['std']:.{digits}f}" if spread else "")
        if stat["n"] < n_seeds:
            text += f" (n={stat['n']})"
        return text

    width = 17 if spread else 14
    kl_columns = [
        ("retain", "kl_true/retain"),
        ("forget1", "kl_true/forget1"),
        ("forget2", "kl_true/forget2"),
        ("f1 first4", "kl_true_early/forget1"),
    ]
    lines = [
        f"Final per-token KL(true row || model), nats, on test sequences; {n_seeds} seed(s)"
        + (", mean±std" if spread else ""),
        "(f1 first4: forget-1 scored on its first 4 predictions only, as a 5-state sequence is)",
        f"{'setting':<15}{'model':<12}" + "".join(f"{name:>{width}}" for name, _ in kl_columns),
    ]
    for setting, entry in summary.items():
        models = {**entry["reference"], **entry["methods"]}
        for model, stats in models.items():
            lines.append(
                f"{setting:<15}{model:<12}"
                + "".join(f"{cell(stats[key]):>{width}}" for _, key in kl_columns)
            )
    progress_columns = [
        ("f1 final", "progress/forget1", 2),
        ("f2 final", "progress/forget2", 2),
        ("f1/f2 final", "progress_ratio", 2),
        ("matched it", "matched_iteration", 0),
        ("f1 matched", "matched_progress/forget1", 2),
        ("f2 matched", "matched_progress/forget2", 2),
        ("f1 first4 m.", "matched_progress/forget1_first4", 2),
        ("f1/f2 matched", "matched_progress_ratio", 2),
        ("f1 mass share", "forget1_mass_share", 2),
    ]
    lines += [
        "",
        "Forgetting progress (0: pretrained's KL, 1: retrained oracle's KL); f1/f2 = 1 is even.",
        "matched: at the first iteration where the mean progress of forget-1 and forget-2"
        " reaches 1 (f1 first4 m.: forget-1's progress on its first 4 predictions there).",
        "f1 mass share: a forget-1 sample's share of the gradient mass w_i * n_i, per sample"
        " over all iterations (0.5: equal per sequence).",
        f"{'setting':<15}{'method':<12}"
        + "".join(f"{name:>{width}}" for name, _, _ in progress_columns),
    ]
    for setting, entry in summary.items():
        for method, stats in entry["methods"].items():
            lines.append(
                f"{setting:<15}{method:<12}"
                + "".join(
                    f"{cell(stats[key], digits):>{width}}" for _, key, digits in progress_columns
                )
            )
    return "\n".join(lines)


def cumulative_mass_share(run: dict, method: str) -> np.ndarray:
    """After each iteration, a forget-1 sample's share of the gradient mass so far:
    mean mass per forget-1 sample / (that + mean mass per forget-2 sample)."""
    weights = run["methods"][method]["gradient_weights"]
    per_sample = {}
    for split in FORGET_SPLITS:
        samples = np.cumsum(weights[split]["samples"]).astype(float)
        samples[samples == 0] = math.nan  # undefined until the set's first sample
        per_sample[split] = np.cumsum(weights[split]["mass"]) / samples
    return per_sample["forget1"] / (per_sample["forget1"] + per_sample["forget2"])


def plot(per_seed: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"npo": "tab:blue", "simnpo": "tab:orange"}
    titles = {"retain": "retain", "forget1": "forget-1", "forget2": "forget-2"}
    fig, axes = plt.subplots(len(SETTINGS), 4, figsize=(17, 4 * len(SETTINGS)), squeeze=False)
    for row, setting in enumerate(SETTINGS):
        runs = [seed_result[setting] for seed_result in per_seed]
        for col, split in enumerate(SPLITS):
            ax = axes[row, col]
            for method in METHODS:
                curves = np.array([r["methods"][method]["curves"]["kl_true"][split] for r in runs])
                steps = np.arange(curves.shape[1])
                ax.plot(steps, curves.mean(axis=0), color=colors[method], label=method)
                if len(runs) > 1:
                    ax.fill_between(
                        steps,
                        curves.min(axis=0),
                        curves.max(axis=0),
                        color=colors[method],
                        alpha=0.2,
                    )
            for model, style in (("pretrained", ":"), ("retrained", "--")):
                level = np.mean([r["reference"][model]["kl_true"][split] for r in runs])
                ax.axhline(level, color="gray", linestyle=style, label=model)
            length = SETTINGS[setting][split]
            ax.set_title(f"{setting}: {titles[split]} ({length} states)")
            ax.set_xlabel("unlearning iteration")
            ax.set_ylabel("KL(true row || model), nats/token")
            if col == 0:
                ax.legend(fontsize=8)
        ax = axes[row, 3]
        for method in METHODS:
            share = np.nanmean([cumulative_mass_share(r, method) for r in runs], axis=0)
            ax.plot(np.arange(1, len(share) + 1), share, color=colors[method], label=method)
        lengths = SETTINGS[setting]
        ax.axhline(0.5, color="gray", linestyle=":", label="equal per sequence")
        ax.axhline(
            (lengths["forget1"] - 1) / (lengths["forget1"] + lengths["forget2"] - 2),
            color="gray",
            linestyle="--",
            label="proportional to length",
        )
        ax.set_ylim(0, 1)
        ax.set_title(f"{setting}: forget-1's share of w_i*n_i")
        ax.set_xlabel("unlearning iteration")
        ax.set_ylabel("per-sample share, cumulative")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--seeds", type=int, default=1, help="number of seeds (seed, seed+1, ...)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="pretraining epochs (default 2; the paper's 5 roughly doubles the runtime)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared 2-core box a second thread spins "
        "against other jobs and runs several times slower)",
    )
    parser.add_argument("--iters", type=int, default=None, help="unlearning iterations (50)")
    parser.add_argument("--out", type=Path, default=None, help="write results JSON here")
    parser.add_argument("--plot", type=Path, default=None, help="write the KL-curve PNG here")
    args = parser.parse_args(argv)

    cfg = QUICK if args.quick else Config()
    if args.epochs is not None:
        cfg = replace(cfg, pretrain_epochs=args.epochs)
    if args.iters is not None:
        cfg = replace(cfg, unlearn_iters=args.iters)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run_benchmark(args, cfg)
    finally:
        torch.set_num_threads(threads_before)  # main() may run inside a test session


def run_benchmark(args: argparse.Namespace, cfg: Config) -> dict:
    start, cpu_start = time.perf_counter(), time.process_time()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f}s] {message}", file=sys.stderr, flush=True)

    seeds = list(range(args.seed, args.seed + args.seeds))
    per_seed = [run_seed(cfg, seed, log) for seed in seeds]
    summary = summarize(per_seed)
    runtime = time.perf_counter() - start
    cpu_time = time.process_time() - cpu_start
    print(format_table(summary, len(seeds)))
    print(
        f"runtime {runtime:.0f}s wall, {cpu_time:.0f}s CPU on {torch.get_num_threads()} thread(s)"
        " (wall time depends on what else runs on the machine)"
    )

    results = {
        "config": asdict(cfg),
        "settings": SETTINGS,
        "seeds": seeds,
        "runtime_s": runtime,
        "cpu_time_s": cpu_time,
        "summary": summary,
        "per_seed": dict(zip(map(str, seeds), per_seed)),
    }
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    if args.plot:
        plot(per_seed, args.plot)
    return results


if __name__ == "__main__":
    main()
