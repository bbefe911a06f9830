"""Offline demo assets: a generated fictitious-author QA set, a word-level tokenizer,
and small Llama models trained on it (target and retrain oracle)."""

from core.demo.build import PRESETS, DemoAssets, build_demo_assets

__all__ = ["PRESETS", "DemoAssets", "build_demo_assets"]
