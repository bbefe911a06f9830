from __future__ import annotations

from functools import cache

from api.schemas.methods import MethodObject
from core.errors import NotFound
from core.methods import LISTED_METHODS


@cache
def list_methods() -> list[MethodObject]:
    """The training methods, then GUARD (its ``output`` is ``guard``, not ``weights``)."""
    # Schemas are fixed for the life of the process: build them once.
    return [MethodObject.from_method(method) for method in LISTED_METHODS.values()]


def get_method_object(name: str) -> MethodObject:
    if name not in LISTED_METHODS:
        raise NotFound(
            f"no method {name!r}; choose one of {', '.join(LISTED_METHODS)}",
            param="name",
            code="method_not_found",
        )
    return MethodObject.from_method(LISTED_METHODS[name])


@cache
def job_spec():
    from api.routers.job_spec import JobSpecObject
    from core.spec import JobSpec, TargetSpec
    from core.training import auto

    return JobSpecObject(
        json_schema=JobSpec.model_json_schema(),
        target_defaults=TargetSpec().model_dump(mode="json"),
        auto_rules={
            "learning_rate": f"{auto.FULL_RATE_TIMES_WIDTH} / the model's hidden size "
            f"(x{auto.LORA_FACTOR:g} for LoRA), within {auto.BOUNDS}",
            "gradient_accumulation_steps": f"about {auto.STEPS_PER_EPOCH} optimizer steps per "
            f"epoch, effective batch at most {auto.REFERENCE_EFFECTIVE_BATCH}",
        },
    )
