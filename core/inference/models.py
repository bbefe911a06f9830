"""The models a serving process holds: loaded on first use, least recently used
evicted beyond ``OBLIVIATE_INFERENCE_MAX_MODELS``."""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import NotFound
from core.models.loading import fetch_model, load_model
from core.settings import Settings
from core.spec import DEFAULT_PROMPT_TEMPLATE

log = logging.getLogger(__name__)

#: Context length when a model's config names none.
FALLBACK_CONTEXT = 2048


@dataclass
class LoadedModel:
    name: str
    model: object
    tokenizer: object
    context_length: int
    #: the template the model was trained with, for chats when it has no chat template
    prompt_template: str
    #: one forward pass at a time on this model (core.inference.generation.decode)
    lock: threading.Lock = field(default_factory=threading.Lock)


def context_length(model, tokenizer) -> int:
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 1_000_000 else FALLBACK_CONTEXT


def trained_prompt_template(folder: str) -> str:
    manifest = Path(folder) / "manifest.json"
    if manifest.is_file():
        try:
            template = json.loads(manifest.read_text()).get("prompt_template")
        except (OSError, ValueError):
            template = None
        if isinstance(template, str) and template:
            return template
    return DEFAULT_PROMPT_TEMPLATE


class ModelCache:
    def __init__(
        self,
        settings: Settings,
        lookup: Callable[[str], str | None],
        *,
        max_models: int,
        device: str,
    ):
        self.settings, self.lookup = settings, lookup
        self.max_models, self.device = max_models, device
        self.loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self.guard = threading.Lock()
        self.loading: dict[str, threading.Lock] = {}

    def get(self, name: str) -> LoadedModel:
        """The model registered as ``name``; NotFound ``model_not_found`` if none is.
        Two requests for a model not yet loaded load it once."""
        with self.guard:
            if name in self.loaded:
                self.loaded.move_to_end(name)
                return self.loaded[name]
            loading = self.loading.setdefault(name, threading.Lock())
        with loading:
            with self.guard:
                if name in self.loaded:
                    return self.loaded[name]
            entry = self._load(name)
            with self.guard:
                self.loaded[name] = entry
                while len(self.loaded) > self.max_models:
                    evicted, _ = self.loaded.popitem(last=False)
                    log.info("unloaded model %s (more than %d held)", evicted, self.max_models)
                self.loading.pop(name, None)
            return entry

    def names(self) -> list[str]:
        with self.guard:
            return list(self.loaded)

    def _load(self, name: str) -> LoadedModel:
        source = self.lookup(name)
        if source is None:
            raise NotFound(
                f"the model {name!r} does not exist", param="model", code="model_not_found"
            )
        folder = fetch_model(
            source, self.settings, lookup=self.lookup, param="model", via_registry=True
        )
        model, tokenizer = load_model(
            folder, lookup=self.lookup, settings=self.settings, reference=name
        )
        model.to(self.device).eval()
        log.info("loaded model %s on %s", name, self.device)
        return LoadedModel(
            name=name,
            model=model,
            tokenizer=tokenizer,
            context_length=context_length(model, tokenizer),
            prompt_template=trained_prompt_template(folder),
        )
