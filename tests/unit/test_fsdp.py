"""One job in two FSDP processes (gloo, on CPU) gives what one process gives at the same
effective batch: the same loss trace and final weights, for full fine-tuning and LoRA
and every registered method (the scenarios of ``test_distributed``), with a last block
smaller than the process count. Rank 0 alone evaluates, on an unsharded copy; the
training state it saves (at an evaluation point or a pause) is the one a single process
saves, and a run resumes from it under either strategy. ``obliviate unlearn --num-processes 2 --strategy fsdp``
publishes the one-process checkpoint.

The two-process checks are those of ``tests/unit/sharded_cases.py``, shared with
``test_deepspeed``; all their two-process runs happen in one spawn (one process group).
"""

from __future__ import annotations

import pytest

from core.errors import InvalidRequest
from tests.unit import test_distributed as ddp
from tests.unit.sharded_cases import *  # noqa: F403  (the shared tests, here under FSDP)


@pytest.fixture(scope="module")
def strategy():
    """The strategy the shared tests of ``sharded_cases`` run under here."""
    return "fsdp"


def test_fsdp_is_a_strategy_and_fp16_under_fsdp_is_refused():
    from core.spec import parse_job_spec

    base = {"model": "m", "forget": "f", "retain": "r"}
    spec = parse_job_spec({**base, "resources": {"gpus": 2, "strategy": "fsdp"}})
    assert spec.resources.strategy == "fsdp"
    with pytest.raises(InvalidRequest) as error:
        parse_job_spec(
            {
                **base,
                "resources": {"gpus": 2, "strategy": "fsdp"},
                "hyperparameters": {"precision": "fp16"},
            }
        )
    assert (error.value.code, error.value.param) == (
        "unsupported_strategy",
        "hyperparameters.precision",
    )
    with pytest.raises(InvalidRequest) as error:
        parse_job_spec(
            {
                **base,
                "resources": {"gpus": 2, "strategy": "fsdp"},
                "hyperparameters": {"sam_rho": 0.1},
            }
        )
    assert (error.value.code, error.value.param) == (
        "unsupported_strategy",
        "hyperparameters.sam_rho",
    )


home = ddp.home
