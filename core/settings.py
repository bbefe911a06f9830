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
    model_buckets: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated s3://bucket[/prefix] locations that s3:// model references "
        "may point into (none: no s3:// model references). The service's own storage is "
        "reachable only through registered models.",
    )
    allow_hub_models: bool = Field(True, description="Accept Hugging Face hub ids as base models.")
    allow_private_urls: bool = Field(
        False, description="Accept http(s) model URLs on private/loopback/link-local addresses."
    )
    webhook_allow_private: bool = Field(
        False,
        description="Accept webhook URLs on loopback, private, link-local or multicast "
        "addresses (checked at registration and at every delivery).",
    )
    webhook_max_attempts: int = Field(
        8, ge=1, description="Delivery attempts before a webhook delivery is failed."
    )
    webhook_backoff_s: float = Field(
        10.0, gt=0, description="Wait before the first retry; doubled after each failure."
    )
    webhook_timeout_s: float = Field(10.0, gt=0, description="Timeout of one delivery attempt.")
    webhook_interval_s: float = Field(
        2.0, gt=0, description="How often a worker sends the webhook deliveries that are due."
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated bearer tokens; empty disables auth (embedded default).",
    )
    signing_key_file: Path | None = Field(
        None,
        description="Ed25519 private key (PEM, PKCS8) that signs forgetting certificates; "
        "default: home/keys/signing-ed25519.pem, made at first use. Every API replica "
        "must share it.",
    )
    audit_checkpoint_interval_s: float = Field(
        3600.0,
        gt=0,
        description="How often each API process signs a checkpoint of each tenant's audit "
        "chain head with the signing key (only heads that moved since their last one).",
    )
    master_key_file: Path | None = Field(
        None,
        description="Master key (base64 of 32 bytes) that wraps each dataset's own "
        "encryption key; default: home/keys/master.key, made at first use. Every API "
        "replica and worker must share it; losing it loses every encrypted dataset.",
    )
    forget_set_retention_days: float | None = Field(
        None,
        ge=0,
        description="Days after a deletion request is fulfilled before the forget sets "
        "of its jobs are shredded automatically; unset keeps them until shredded on "
        "request (POST /v1/datasets/{id}/shred).",
    )
    deletion_batch_window_seconds: float = Field(
        300.0,
        ge=0,
        le=7 * 24 * 3600,
        description="Deletion requests filed with their records, model and job settings "
        "that arrive within this many seconds of the first one for the same model and "
        "settings are served by one job over the union of their records "
        "(docs/deletion-requests.md); 0 serves each at once.",
    )
    max_upload_bytes: int = Field(200 * 1024 * 1024, gt=0, description="Upload size limit.")
    # Expansion limits: what a dataset or model may grow to once decoded, decompressed or
    # extracted, whatever its size on the wire (issue 14). Each has its own error code.
    max_dataset_records: int = Field(
        500_000, gt=0, description="Records in one dataset file (too_many_records)."
    )
    max_dataset_decoded_bytes: int = Field(
        256 * 1024 * 1024,
        gt=0,
        description="Decoded size of one dataset file: JSONL/CSV text, Parquet values once "
        "decompressed (decoded_too_large).",
    )
    max_line_bytes: int = Field(
        8 * 1024 * 1024, gt=0, description="One JSONL line or CSV record (line_too_large)."
    )
    max_cell_bytes: int = Field(
        4 * 1024 * 1024, gt=0, description="One field value, UTF-8 (cell_too_large)."
    )
    max_model_bytes: int = Field(
        64 * 1024**3,
        gt=0,
        description="A model fetched from object storage or an archive: bytes downloaded and "
        "bytes extracted (model_too_large).",
    )
    max_model_files: int = Field(
        10_000,
        gt=0,
        description="Objects under an s3:// model prefix, members of a model archive "
        "(too_many_model_files).",
    )

    heartbeat_interval_s: float = Field(
        2.0, gt=0, description="How often a worker records progress and reads cancellation."
    )
    # Recovery (README, "Recovery times"): a crashed worker's job is back in the queue
    # stale_after_s to stale_after_s + reaper_interval_s after its last heartbeat (30
    # missed heartbeats: a database blip does not reap healthy jobs); a job whose message
    # was lost (Redis restarted without persistence) is published again after
    # requeue_queued_after_s (only messages missing from the broker: a job waiting
    # behind a backlog is not published twice).
    stale_after_s: float = Field(
        60.0, gt=0, description="Heartbeat age after which a job is reaped."
    )
    requeue_queued_after_s: float = Field(
        60.0,
        gt=0,
        description="Re-publish a queued job whose message has been missing from the "
        "broker this long (a lost message; a job waiting behind others is not re-published).",
    )
    max_attempts: int = Field(3, ge=1, description="Attempts before a reaped job fails.")
    job_time_limit_s: int = Field(24 * 3600, gt=0, description="Hard time limit of one job.")
    reaper_interval_s: float = Field(10.0, gt=0, description="How often the reaper runs.")
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

    inference_url: str = Field(
        "http://127.0.0.1:8001",
        description="Where /openai/v1 generation is forwarded: the model-serving process "
        "(obliviate inference; obliviate serve starts one and sets this) or any "
        "OpenAI-compatible server, e.g. vLLM (docs/inference.md).",
    )
    inference_api_key: str | None = Field(
        None, description="Bearer token the API sends to the inference server, if it wants one."
    )
    inference_timeout_s: float = Field(
        600.0, gt=0, description="How long the API waits on the inference server's answer."
    )
    inference_max_models: int = Field(
        2, ge=1, description="Models a serving process keeps loaded (least recently used go)."
    )
    inference_max_batch: int = Field(
        8, ge=1, le=256, description="Requests to one model a serving process decodes together."
    )

    demo_on_start: bool = Field(True, description="Build and register demo assets at first start.")
    demo_preset: str = Field("demo", description="Demo asset preset: tiny or demo.")

    @field_validator("model_roots", "api_keys", "worker_gpus", "model_buckets", mode="before")
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

    @field_validator("model_buckets")
    @classmethod
    def _s3_locations(cls, value: list[str]) -> list[str]:
        from core.storage.locations import parse_s3_url

        return [str(parse_s3_url(location)) for location in value]

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> Settings:
        self.home = self.home.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'obliviate.db'}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        if not self.storage_url:
            self.storage_url = (self.home / "store").as_uri()
        if self.signing_key_file is None:
            self.signing_key_file = self.home / "keys" / "signing-ed25519.pem"
        if self.master_key_file is None:
            self.master_key_file = self.home / "keys" / "master.key"
        # The service's own folders (registered and demo models, a local object store)
        # are always loadable; anything else must be listed.
        own = [self.home]
        if self.storage_url.startswith("file://"):
            own.append(Path(url2pathname(urlparse(self.storage_url).path)))
        self.model_roots = [p.expanduser().resolve() for p in [*self.model_roots, *own]]
        return self

    @property
    def own_store_location(self):
        """The service's own bucket and prefix (an ``S3Location``) when it stores on S3."""
        from core.storage.locations import S3Location

        if not self.storage_url.startswith("s3://"):
            return None
        parsed = urlparse(self.storage_url)
        return S3Location(parsed.netloc, parsed.path.strip("/"))

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
