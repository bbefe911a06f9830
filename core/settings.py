"""All configuration, from environment variables prefixed ``OBLIVIATE_``.

With nothing set, the service runs embedded under ``OBLIVIATE_HOME`` (default
``./.obliviate``): a SQLite file, a local folder as object store, and Celery's
filesystem transport as a broker that needs no server. Production sets the URLs
(``OBLIVIATE_DATABASE_URL=postgresql+psycopg://...``, ``OBLIVIATE_BROKER_URL=redis://...``,
``OBLIVIATE_STORAGE_URL=s3://bucket/prefix``). The README's configuration table
mirrors this class.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlparse
from urllib.request import url2pathname

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OBLIVIATE_", extra="ignore")

    home: Path = Field(Path(".obliviate"), description="Folder for all embedded state.")
    database_url: str = Field("", description="SQLAlchemy URL; default: SQLite file in home.")
    broker_url: str = Field("", description="Celery broker; default: filesystem transport in home.")
    storage_url: str = Field(
        "", description="file:///path or s3://bucket/prefix; default: home/store."
    )
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint (MinIO, SeaweedFS).")
    s3_region: str | None = Field(None, description="S3 region.")

    model_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated folders that file:// model locations may point into; "
        "OBLIVIATE_HOME and a file:// store are always allowed.",
    )
    allow_hub_models: bool = Field(True, description="Accept Hugging Face hub ids as base models.")
    allow_private_urls: bool = Field(
        False, description="Accept http(s) model URLs on private/loopback/link-local addresses."
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated bearer tokens; empty disables auth (embedded default).",
    )
    max_upload_bytes: int = Field(200 * 1024 * 1024, gt=0, description="Upload size limit.")

    heartbeat_interval_s: float = Field(
        2.0, gt=0, description="How often a worker records progress and reads cancellation."
    )
    stale_after_s: float = Field(
        120.0, gt=0, description="Heartbeat age after which a job is reaped."
    )
    requeue_queued_after_s: float = Field(
        60.0,
        gt=0,
        description="Re-publish a queued job whose message has been missing from the "
        "broker this long (a lost message; a job waiting behind others is not re-published).",
    )
    max_attempts: int = Field(3, ge=1, description="Attempts before a reaped job fails.")
    job_time_limit_s: int = Field(24 * 3600, gt=0, description="Hard time limit of one job.")
    reaper_interval_s: float = Field(30.0, gt=0, description="How often the reaper runs.")
    stream_poll_interval_s: float = Field(
        0.25,
        gt=0,
        le=60,
        description="How often each API process reads changes for its live streams (SSE).",
    )

    worker_gpus: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Devices a worker owns, e.g. 0,1,2,3 or 0-7 (CUDA indices or GPU UUIDs); "
        "each child process is pinned to one slot of them. Empty: no pinning.",
    )
    worker_gpus_per_job: int = Field(
        1, ge=1, le=8, description="Devices per worker slot: the job size the worker serves."
    )
    worker_accept_smaller: bool = Field(
        False, description="Let a worker's slots also run jobs that ask for fewer GPUs."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="text for people, json (one object per line) for log pipelines."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Lowest level logged."
    )

    demo_on_start: bool = Field(True, description="Build and register demo assets at first start.")
    demo_preset: str = Field("demo", description="Demo asset preset: tiny or demo.")

    @field_validator("model_roots", "api_keys", "worker_gpus", mode="before")
    @classmethod
    def _split_commas(cls, value):
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("worker_gpus")
    @classmethod
    def _expand_device_ranges(cls, value: list[str]) -> list[str]:
        """``0-3`` stands for 0,1,2,3; anything else is one device (an index or a UUID)."""
        devices: list[str] = []
        for item in value:
            first, dash, last = item.partition("-")
            if dash and first.isdigit() and last.isdigit():
                if int(last) < int(first):
                    raise ValueError(f"device range {item!r} runs backwards")
                devices += [str(index) for index in range(int(first), int(last) + 1)]
            else:
                devices.append(item)
        if len(set(devices)) != len(devices):
            raise ValueError(f"a device is listed twice: {','.join(devices)}")
        return devices

    @model_validator(mode="after")
    def _whole_slots(self) -> Settings:
        if self.worker_gpus and len(self.worker_gpus) % self.worker_gpus_per_job:
            raise ValueError(
                f"worker_gpus: {len(self.worker_gpus)} devices do not split into slots of "
                f"worker_gpus_per_job={self.worker_gpus_per_job}"
            )
        return self

    @property
    def worker_gpu_slots(self) -> list[list[str]]:
        """The device sets of a worker's child processes, one job each at a time."""
        size = self.worker_gpus_per_job
        return [self.worker_gpus[i : i + size] for i in range(0, len(self.worker_gpus), size)]

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> Settings:
        self.home = self.home.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'obliviate.db'}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        if not self.storage_url:
            self.storage_url = (self.home / "store").as_uri()
        # The service's own folders (registered and demo models, a local object store)
        # are always loadable; anything else must be listed.
        own = [self.home]
        if self.storage_url.startswith("file://"):
            own.append(Path(url2pathname(urlparse(self.storage_url).path)))
        self.model_roots = [p.expanduser().resolve() for p in [*self.model_roots, *own]]
        return self

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def cache_dir(self) -> Path:
        """Local copies of models and datasets fetched from object storage."""
        return self.home / "cache"

    @property
    def broker_folder(self) -> Path:
        return self.home / "broker"

    @property
    def is_embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")


@lru_cache
def get_settings() -> Settings:
    return Settings()
