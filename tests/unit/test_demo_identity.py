"""A demo build's identity: the hashes that tell two builds of one preset apart, and the
platform that trained them. Benchmark figures differ by build (docs/minitofu.md), so a
benchmark's output names the build it ran on."""

from __future__ import annotations

import hashlib

import pytest

from core.demo import build_demo_assets
from core.demo.build import _platform


def test_identity_hashes_the_files_it_names(tiny_demo):
    identity = tiny_demo.identity()
    weights = (tiny_demo.target / "model.safetensors").read_bytes()
    assert identity["target_sha256"] == hashlib.sha256(weights).hexdigest()[:16]
    tokenizer = (tiny_demo.tokenizer / "tokenizer.json").read_bytes()
    assert identity["tokenizer_sha256"] == hashlib.sha256(tokenizer).hexdigest()[:16]
    assert identity["retrain_sha256"] not in (None, identity["target_sha256"])
    assert (identity["preset"], identity["seed"]) == (tiny_demo.preset, 0)


def test_a_rebuild_on_the_same_machine_is_the_same_build(tiny_demo, tmp_path):
    if tiny_demo.summary.get("built_on") != _platform():
        pytest.skip("the cached tiny demo was built by other software or on another CPU")
    again = build_demo_assets(tmp_path / "again", tiny_demo.preset)
    assert again.summary["built_on"]["cpu_capability"]
    assert again.identity() == tiny_demo.identity()
