"""The models a serving process holds: loaded on first use, least recently used
evicted beyond ``OBLIVIATE_INFERENCE_MAX_MODELS``.

A name ``base+g1+g2`` asks for the registered model ``base`` decoded under the guards
registered as ``g1`` and ``g2`` (``core.methods.guard``; ``+`` is never part of a
registered name). Guards are small and kept beside the models."""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from core.errors import InvalidRequest, NotFound
from core.inference.batching import Batcher
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
    #: guards decoding applies (core.methods.guard.Guard)
    guards: list = field(default_factory=list)
    #: decodes this model's requests in batches (core.inference.batching)
    batcher: object = None


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
        max_batch: int = 8,
    ):
        self.settings, self.lookup = settings, lookup
        self.max_models, self.device, self.max_batch = max_models, device, max_batch
        self.loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self.guard = threading.Lock()
        self.loading: dict[str, threading.Lock] = {}
        self.guards: dict = {}

    def get(self, name: str) -> LoadedModel:
        """The model ``name`` names (``base`` or ``base+guard...``); NotFound
        ``model_not_found`` if a part is not registered, InvalidRequest
        ``guard_incompatible`` if a guard was not built on that base."""
        base_name, *guard_names = name.split("+")
        entry = self._model(base_name)
        if not guard_names:
            return entry
        guards = [self._guard(guard_name, entry) for guard_name in guard_names]
        return replace(entry, name=name, guards=guards)

    def _guard(self, name: str, base: LoadedModel):
        from core.methods.guard import incompatibility, is_guard_folder, load_guard

        with self.guard:
            cached = self.guards.get(name)
        if cached is None:
            folder = self._folder(name)
            if not is_guard_folder(folder):
                raise InvalidRequest(
                    f"{name!r} is not a guard (no guard.json); ask for it alone",
                    param="model",
                    code="guard_incompatible",
                )
            cached = load_guard(folder, base.tokenizer)
            with self.guard:
                self.guards[name] = cached
        reason = incompatibility(cached, base.tokenizer, base.name)
        if reason:
            raise InvalidRequest(
                f"the guard {name!r} cannot run on {base.name!r}: {reason}",
                param="model",
                code="guard_incompatible",
            )
        return cached

    def _model(self, name: str) -> LoadedModel:
        """The model registered as ``name``; two requests for a model not yet loaded
        load it once."""
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
                    evicted, old = self.loaded.popitem(last=False)
                    old.batcher.close()
                    log.info("unloaded model %s (more than %d held)", evicted, self.max_models)
                self.loading.pop(name, None)
            return entry

    def names(self) -> list[str]:
        with self.guard:
            return list(self.loaded)

    def _folder(self, name: str) -> str:
        source = self.lookup(name)
        if source is None:
            raise NotFound(
                f"the model {name!r} does not exist", param="model", code="model_not_found"
            )
        return fetch_model(
            source, self.settings, lookup=self.lookup, param="model", via_registry=True
        )

    def _load(self, name: str) -> LoadedModel:
        from core.methods.guard import GUARD_FILE, is_guard_folder

        folder = self._folder(name)
        if is_guard_folder(folder):
            base = json.loads((Path(folder) / GUARD_FILE).read_text())["base_model"]
            raise InvalidRequest(
                f"{name!r} is a guard, not a model: ask for {base}+{name}",
                param="model",
                code="guard_incompatible",
            )
        model, tokenizer = load_model(
            folder, lookup=self.lookup, settings=self.settings, reference=name
        )
        model.to(self.device).eval()
        log.info("loaded model %s on %s", name, self.device)
        entry = LoadedModel(
            name=name,
            model=model,
            tokenizer=tokenizer,
            context_length=context_length(model, tokenizer),
            prompt_template=trained_prompt_template(folder),
        )
        entry.batcher = Batcher(model, tokenizer, entry.lock, self.max_batch)
        return entry
