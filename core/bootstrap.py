"""First start of a service: schema, then the demo model and data, registered so a
newcomer can submit a job at once.

Demo datasets get stable ids (``ds_demo_forget10``, ...) and demo models stable names
(``demo-target``, ``demo-retrain``), the same ones the CLI understands, so one job
spec (``examples/demo-simnpo.yaml``) works in both places.
"""

from __future__ import annotations

import logging

from core.db.datasets import existing_dataset_ids
from core.db.model_registry import register_model
from core.demo import DemoAssets, build_demo_assets
from core.settings import Settings

log = logging.getLogger(__name__)

DEMO_DATASET_PREFIX = "ds_demo_"
DEMO_MODELS = {"demo-target": "target", "demo-retrain": "retrain"}
DEMO_DESCRIPTIONS = {
    "demo-target": "Demo: small Llama fine-tuned on all fictitious authors (memorized).",
    "demo-retrain": "Demo: the same trained without the forget10 authors (the oracle).",
}


def demo_folder(settings: Settings, preset: str | None = None):
    return settings.home / "demo" / (preset or settings.demo_preset)


def install_demo(settings: Settings, session_factory, store, *, progress=None) -> DemoAssets:
    """Build (cached) and register the demo assets; idempotent."""
    from core.datasets import record_dataset, store_dataset_file
    from core.envelope import load_or_create_master_key

    assets = build_demo_assets(demo_folder(settings), settings.demo_preset, progress=progress)
    with session_factory() as session:
        wanted = {f"{DEMO_DATASET_PREFIX}{name}": path for name, path in assets.data.items()}
        present = existing_dataset_ids(session, wanted)
        for dataset_id, path in sorted(wanted.items()):
            if dataset_id not in present:
                stored = store_dataset_file(
                    store,
                    path,
                    master_key=load_or_create_master_key(settings.master_key_file),
                    filename=path.name,
                    name=f"demo-{path.stem}",
                    dataset_id=dataset_id,
                )
                record_dataset(session, stored)
        for name, folder in DEMO_MODELS.items():
            prefix = f"models/{name}"
            if not store.exists(f"{prefix}/config.json"):
                store.upload_folder(getattr(assets, folder), prefix, last="config.json")
            register_model(
                session, name, store.uri(prefix), "demo", description=DEMO_DESCRIPTIONS[name]
            )
        session.commit()
    log.info(
        "demo assets registered: models %s, datasets %s",
        ", ".join(DEMO_MODELS),
        ", ".join(sorted(wanted)),
    )
    return assets
