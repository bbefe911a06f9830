"""Training throughput of one job in 1 process and in N data-parallel processes, at the
same effective batch (DDP, ``core.training.distributed``).

    python bench/distributed_throughput.py                   # 1 vs 2 CPU processes (gloo)
    python bench/distributed_throughput.py --processes 4 --hidden 512 --steps 30
    python bench/distributed_throughput.py --device cuda --processes 2   # nccl, 1 GPU each

A random Llama-style model trains with GradDiff (forget and retain forward passes) on
synthetic question/answer sequences for ``--steps`` optimizer steps. One process runs
micro-batches of ``batch x N``; N processes run ``batch`` each, so both see the same
blocks. tokens/s counts the forget and retain tokens of steps 2..N (all ranks together)
over their wall time, leaving the start (process launch, model build, first step) out.
Scaling efficiency = tokens/s with N / (N x tokens/s with 1). On CPU each process uses
one thread (``core.runtime.cpu_threads_for``), so N processes need N free cores.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path


def _examples(n: int, seed: int, vocab: int, length: int):
    from core.data.encoding import IGNORE_INDEX, EncodedExample

    rng = random.Random(seed)
    examples = []
    for index in range(n):
        prompt = [1] + [rng.randrange(3, vocab) for _ in range(length // 2 - 1)]
        answer = [rng.randrange(3, vocab) for _ in range(length // 2)]
        examples.append(
            EncodedExample(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer, index)
        )
    return examples


class _Tokenizer:
    pad_token_id = 0
    eos_token_id = 2


def _train(config: dict) -> dict | None:
    """One run (in every rank of a multi-process run); rank 0's figures."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from core.methods import get_method
    from core.training import distributed
    from core.training.loop import run_training

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=config["vocab"],
            hidden_size=config["hidden"],
            intermediate_size=4 * config["hidden"],
            num_hidden_layers=config["layers"],
            num_attention_heads=max(1, config["hidden"] // 64),
            num_key_value_heads=max(1, config["hidden"] // 64),
            max_position_embeddings=config["length"],
        )
    )
    if config["device"] == "cuda":
        model.to(f"cuda:{distributed.local_rank()}")
    method = get_method("graddiff")
    hparams = method.parse_hyperparameters(
        {
            "learning_rate": 1e-4,
            "epochs": 1,
            "max_steps": config["steps"],
            "batch_size": config["batch"],
            "gradient_accumulation_steps": 1,
            "precision": "fp32" if config["device"] == "cpu" else "bf16",
            "warmup_ratio": 0.0,
        }
    )
    block = config["batch"] * distributed.world_size()
    forget = _examples(block * config["steps"], 1, config["vocab"], config["length"])
    retain = _examples(len(forget), 2, config["vocab"], config["length"])
    result = run_training(model, _Tokenizer(), forget, retain, method, hparams, seed=0)
    first, last = result.history[0], result.history[-1]
    if not distributed.is_main():
        return None
    tokens = last.tokens - first.tokens  # forget and retain, all ranks
    return {"tokens_per_s": tokens / (last.elapsed_s - first.elapsed_s), "steps": result.steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--length", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=8, help="sequences per process")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures")
    args = parser.parse_args()

    from core.training import distributed

    config = {key: value for key, value in vars(args).items() if key not in ("out", "processes")}
    one = _train({**config, "batch": args.batch * args.processes})
    with tempfile.TemporaryDirectory() as workdir:
        many = distributed.run_in_processes(args.processes, _train, config, workdir=Path(workdir))
    efficiency = many["tokens_per_s"] / (args.processes * one["tokens_per_s"])
    figures = {
        "config": {**config, "processes": args.processes, "backend": distributed.backend()},
        "one_process_tokens_per_s": round(one["tokens_per_s"], 1),
        f"{args.processes}_processes_tokens_per_s": round(many["tokens_per_s"], 1),
        "speedup": round(many["tokens_per_s"] / one["tokens_per_s"], 2),
        "scaling_efficiency": round(efficiency, 2),
    }
    print(f"1 process:   {one['tokens_per_s']:8.0f} tokens/s")
    print(f"{args.processes} processes: {many['tokens_per_s']:8.0f} tokens/s")
    print(f"speedup {figures['speedup']}x, scaling efficiency {figures['scaling_efficiency']}")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
