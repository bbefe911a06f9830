"""The full training state at a step boundary, so that a run can stop and go on later
with the same result as if it never stopped.

What has to be kept: the trainable weights (all of them, or only LoRA adapters), AdamW's
moments, the schedule's position, every random number generator the loop draws from
(the data-order generator, torch's global generator for dropout, Python's and NumPy's),
where in the data the run is (epoch and block), the step history, and what was computed
once from the model before training (NPO's reference NLLs). The frozen base weights are
not kept: a resumed run reloads the job's base model, which also rebuilds any KL
reference from the original weights.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

STATE_TENSORS = "state.pt"
STATE_INFO = "state.json"
STATE_VERSION = 1


@dataclass
class TrainingState:
    step: int
    #: epoch to continue in, and the index of the first block of it not yet trained
    epoch: int
    block_start: int
    tokens: int
    elapsed_s: float
    total_steps: int
    #: StepMetrics as dicts, oldest first
    history: list[dict] = field(default_factory=list)
    #: the data-order generator as it was at the start of ``epoch`` (the epoch's
    #: permutation and retain partners are drawn again from it on resume)
    order_generator: Any = None
    torch_rng: Any = None
    python_rng: Any = None
    numpy_rng: Any = None
    #: trainable parameters by name (the unwrapped model's ``named_parameters``)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer: dict | None = None
    scheduler: dict | None = None
    ref_nll: torch.Tensor | None = None
    #: free-form facts of the caller (e.g. the evaluation points seen so far)
    extra: dict = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        """Tensors in one ``torch.save`` file, the rest as JSON; the JSON is written last,
        so a folder with ``state.json`` holds a complete state."""
        import torch

        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            "order_generator": self.order_generator,
            "torch_rng": self.torch_rng,
            "weights": self.weights,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "ref_nll": self.ref_nll,
            "python_rng": self.python_rng,
            "numpy_rng": self.numpy_rng,
        }
        (folder / STATE_INFO).unlink(missing_ok=True)
        torch.save(tensors, folder / STATE_TENSORS)
        info = {key: value for key, value in asdict(self).items() if key not in tensors}
        (folder / STATE_INFO).write_text(json.dumps({"version": STATE_VERSION, **info}))

    @classmethod
    def load(cls, folder: Path) -> TrainingState:
        import torch

        info = json.loads((folder / STATE_INFO).read_text())
        if info.pop("version", None) != STATE_VERSION:
            raise ValueError(f"training state in {folder} has an unknown version")
        # Our own file, written by save(): optimizer states and RNG tuples need pickle.
        tensors = torch.load(folder / STATE_TENSORS, map_location="cpu", weights_only=False)
        return cls(**info, **tensors)

    @staticmethod
    def exists(folder: Path) -> bool:
        return (folder / STATE_INFO).is_file() and (folder / STATE_TENSORS).is_file()


def capture_rng() -> dict[str, Any]:
    import numpy as np
    import torch

    return {
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "numpy_rng": np.random.get_state(),
    }


def restore_rng(state: TrainingState) -> None:
    import numpy as np
    import torch

    if state.torch_rng is not None:
        torch.set_rng_state(state.torch_rng)
    if state.python_rng is not None:
        random.setstate(_as_tuple(state.python_rng))
    if state.numpy_rng is not None:
        np.random.set_state(state.numpy_rng)


def _as_tuple(value):
    """random.setstate wants tuples all the way down (a JSON round trip makes lists)."""
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    return value


def trainable_weights(model) -> dict[str, torch.Tensor]:
    return {
        name: param.detach().to("cpu", copy=True)
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def load_trainable_weights(model, weights: dict[str, torch.Tensor]) -> None:
    import torch

    params = dict(model.named_parameters())
    missing = [name for name in weights if name not in params]
    if missing:
        raise ValueError(
            f"the saved training state does not fit this model: {len(missing)} weights "
            f"unknown (first: {missing[0]})"
        )
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
