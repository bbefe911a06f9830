"""bench/sizing.py against figures derived by hand (docs/sizing.md's worked example),
and the doc's tables are what the script prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.bench import bench_module

DOC = Path(__file__).resolve().parents[2] / "docs" / "sizing.md"


@pytest.fixture(scope="module")
def sizing():
    with bench_module("sizing.py") as module:
        yield module


def test_parameter_counts_match_the_public_checkpoints(sizing):
    counts = {arch.name.split()[0]: arch.parameters for arch in sizing.ARCHITECTURES}
    # Published sizes: Llama-3.2-1B 1.24B, 3.2-3B 3.21B, 3.1-8B 8.03B, 2-13B 13.02B,
    # CodeLlama-34B 33.74B, 3.1-70B 70.55B.
    expected = {
        "1B": 1.24e9,
        "3B": 3.21e9,
        "8B": 8.03e9,
        "13B": 13.02e9,
        "34B": 33.74e9,
        "70B": 70.55e9,
    }
    for name, parameters in expected.items():
        assert counts[name] == pytest.approx(parameters, rel=5e-3), name


def test_the_worked_example_of_the_doc(sizing):
    llama8b = next(a for a in sizing.ARCHITECTURES if a.name.startswith("8B"))
    assert llama8b.parameters == 8_030_261_248
    # per token: 32 x (20 x 4096 + 8 x 14336) + 6 x 128256
    assert llama8b.activation_bytes_per_token(False) == 32 * (81_920 + 114_688) + 769_536
    tokens = 8 * 512
    full = sizing.bytes_per_gpu(llama8b, "full", 1, tokens, False)
    assert full == 16 * 8_030_261_248 + tokens * 7_060_992 + int(1.5 * 2**30)
    assert round(full / 2**30) == 148
    assert sizing.fewest_gpus(llama8b, "full", 80e9, tokens, False) is None
    assert sizing.fewest_gpus(llama8b, "fsdp", 80e9, tokens, False) == 4
    # LoRA r=8 on all 7 linear layers of 32 layers: 32 x 8 x sum(in + out).
    shapes = [(4096, 4096), (4096, 1024), (4096, 1024), (4096, 4096)] + [(4096, 14336)] * 3
    assert llama8b.lora_parameters(8) == 32 * 8 * sum(a + b for a, b in shapes)


def test_checkpointing_and_sharding_only_ever_lower_the_peak(sizing):
    for arch in sizing.ARCHITECTURES:
        for mode in ("full", "lora", "fsdp", "fsdp-lora"):
            plain = sizing.bytes_per_gpu(arch, mode, 2, 4096, False)
            assert sizing.bytes_per_gpu(arch, mode, 2, 4096, True) < plain
        assert sizing.bytes_per_gpu(arch, "fsdp", 8, 4096, True) < sizing.bytes_per_gpu(
            arch, "fsdp", 2, 4096, True
        )


def test_the_doc_shows_the_tables_the_script_prints(sizing):
    text = DOC.read_text()
    for gpu_gb in (24, 80, 141):
        assert sizing.table(gpu_gb, 8 * 512) in text
