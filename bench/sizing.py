"""Which model sizes fit which GPU counts: memory per GPU computed from the formulas in
docs/sizing.md (weights, gradients, AdamW moments, activations with and without
gradient checkpointing), for full fine-tuning, LoRA and FSDP. Prints the tables the
doc shows; nothing is measured.

    python bench/sizing.py                      # 80 GB GPUs, 8 x 512 tokens per GPU
    python bench/sizing.py --gpu-gb 24 --batch-size 4 --max-length 1024
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

GIB = 2**30


@dataclass(frozen=True)
class Architecture:
    """A Llama-style decoder: RMSNorm, grouped-query attention, SwiGLU MLP."""

    name: str
    vocab: int
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    tied_embeddings: bool

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every linear layer of one decoder layer."""
        h, q, kv, i = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        )
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    @property
    def layer_parameters(self) -> int:
        return sum(a * b for a, b in self.linear_shapes()) + 2 * self.hidden  # + 2 RMSNorms

    @property
    def parameters(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return embeddings + self.layers * self.layer_parameters + self.hidden

    def lora_parameters(self, rank: int) -> int:
        """Adapters A (in x r) and B (r x out) on every linear layer ("all-linear")."""
        return self.layers * sum(rank * (a + b) for a, b in self.linear_shapes())

    def activation_bytes_per_token(self, checkpointing: bool) -> int:
        """Saved for the backward pass, per token, under bf16 autocast with fused (SDPA /
        flash) attention, which keeps no seq x seq matrix:
        per layer 20h + 8i bytes (two RMSNorm inputs in fp32 and outputs in bf16, q, k, v,
        the attention output and the residual stream in bf16; the MLP's gate, up, SiLU and
        product in bf16); with checkpointing only each layer's bf16 input (2h) stays, plus
        one layer's full set while it is recomputed. The LM head adds 6V: bf16 logits and
        the fp32 copy the loss is computed on."""
        per_layer = 20 * self.hidden + 8 * self.intermediate
        layers = (
            self.layers * 2 * self.hidden + per_layer if checkpointing else self.layers * per_layer
        )
        return layers + 6 * self.vocab


ARCHITECTURES = [
    Architecture("1B (Llama-3.2-1B)", 128256, 2048, 16, 8192, 32, 8, 64, True),
    Architecture("3B (Llama-3.2-3B)", 128256, 3072, 28, 8192, 24, 8, 128, True),
    Architecture("8B (Llama-3.1-8B)", 128256, 4096, 32, 14336, 32, 8, 128, False),
    Architecture("13B (Llama-2-13B)", 32000, 5120, 40, 13824, 40, 40, 128, False),
    Architecture("34B (CodeLlama-34B)", 32000, 8192, 48, 22016, 64, 8, 128, False),
    Architecture("70B (Llama-3.1-70B)", 128256, 8192, 80, 28672, 64, 8, 128, False),
]

#: CUDA context, cuBLAS workspaces, NCCL buffers: per GPU, whatever the model.
RUNTIME_BYTES = int(1.5 * GIB)
#: Share of a GPU's memory a plan may use: the rest is left to allocator fragmentation.
USABLE = 0.9
#: fp32 master weights (4) + fp32 gradients (4) + AdamW's two fp32 moments (8).
FULL_BYTES_PER_PARAMETER = 16


def bytes_per_gpu(
    arch: Architecture, mode: str, gpus: int, tokens: int, checkpointing: bool, lora_rank: int = 8
) -> int:
    """Peak memory of one GPU. ``mode``:

    - ``full``: full fine-tuning on one GPU, or under DDP (every rank holds everything):
      16 B per parameter + activations;
    - ``lora``: the frozen base in bf16 (2 B per parameter), the adapters at 16 B per
      parameter, activations as for full fine-tuning (the backward pass runs through
      every layer to reach the adapters);
    - ``fsdp``: full fine-tuning sharded over ``gpus``: 16 B per parameter / gpus, plus two
      decoder layers gathered at once (the one computing and the one prefetched) in fp32;
    - ``fsdp-lora``: LoRA with the frozen base sharded too: 2 B per parameter / gpus plus
      two gathered layers in bf16.
    """
    activations = tokens * arch.activation_bytes_per_token(checkpointing)
    adapters = arch.lora_parameters(lora_rank) * FULL_BYTES_PER_PARAMETER
    if mode == "full":
        state = FULL_BYTES_PER_PARAMETER * arch.parameters
    elif mode == "lora":
        state = 2 * arch.parameters + adapters
    elif mode == "fsdp":
        state = FULL_BYTES_PER_PARAMETER * arch.parameters // gpus + 2 * 4 * arch.layer_parameters
    elif mode == "fsdp-lora":
        state = (2 * arch.parameters + adapters) // gpus + 2 * 2 * arch.layer_parameters
    else:
        raise ValueError(mode)
    return state + activations + RUNTIME_BYTES


GPU_COUNTS = (1, 2, 4, 8, 16, 32, 64)
MAX_GPUS = GPU_COUNTS[-1]


def fewest_gpus(arch, mode, gpu_bytes, tokens, checkpointing, counts=GPU_COUNTS):
    """The smallest GPU count whose per-GPU peak fits (None: not even the largest)."""
    if mode in ("full", "lora"):  # replicated: more GPUs do not lower the per-GPU peak
        counts = (1,)
    for gpus in counts:
        if bytes_per_gpu(arch, mode, gpus, tokens, checkpointing) <= USABLE * gpu_bytes:
            return gpus
    return None


def table(gpu_gb: float, tokens: int) -> str:
    gpu_bytes = gpu_gb * 10**9
    modes = [
        ("full", "full FT, 1 GPU / DDP"),
        ("lora", "LoRA r=8, 1 GPU / DDP"),
        ("fsdp", "full FT, FSDP"),
        ("fsdp-lora", "LoRA, FSDP"),
    ]
    header = (
        "| model | parameters | "
        + " | ".join(f"{label} (ckpt off / on)" for _, label in modes)
        + " |"
    )
    lines = [header, "|" + " --- |" * (2 + len(modes))]
    for arch in ARCHITECTURES:
        cells = []
        for mode, _ in modes:
            pair = []
            for checkpointing in (False, True):
                gpus = fewest_gpus(arch, mode, gpu_bytes, tokens, checkpointing)
                # When nothing fits: the peak at the most GPUs tried.
                shown = gpus or (1 if mode in ("full", "lora") else MAX_GPUS)
                peak = bytes_per_gpu(arch, mode, shown, tokens, checkpointing) / GIB
                if gpus is None:
                    pair.append(f"no ({peak:.0f} GiB at {shown})")
                elif mode in ("full", "lora"):
                    pair.append(f"1 ({peak:.0f} GiB)")
                else:
                    pair.append(f"{gpus} ({peak:.0f} GiB)")
            cells.append(" / ".join(pair))
        lines.append(f"| {arch.name} | {arch.parameters / 1e9:.2f}B | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--gpu-gb", type=float, nargs="+", default=[24, 40, 80, 141], help="GPU memory, GB"
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, help="sequences per GPU per micro-batch"
    )
    parser.add_argument("--max-length", type=int, default=512, help="tokens per sequence")
    args = parser.parse_args()
    tokens = args.batch_size * args.max_length
    for gpu_gb in args.gpu_gb:
        print(f"\n### {gpu_gb:g} GB GPUs, {args.batch_size} x {args.max_length} tokens per GPU\n")
        print("GPUs needed (peak GiB per GPU), without / with gradient checkpointing:\n")
        print(table(gpu_gb, tokens))


if __name__ == "__main__":
    main()
