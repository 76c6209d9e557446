"""The one typed settings class, read from the environment (prefix ``AIDETECT_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from storage import ObjectStore, open_store


class Settings(BaseSettings):
    """Everything configurable, with the embedded default (local folder store) as default."""

    model_config = SettingsConfigDict(env_prefix="AIDETECT_", env_file=None, extra="ignore")

    home: Path = Field(Path(".aidetect"), description="working folder: local store, caches, logs")
    store_url: str = Field(
        "",
        description="object store: a folder path or file:// URL (embedded default), or s3://bucket/prefix",
    )
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint (MinIO, moto); None for AWS")
    s3_region: str = "us-east-1"

    # serving
    model_alias: str = "production"
    alias_poll_seconds: float = Field(2.0, gt=0)
    max_upload_bytes: int = Field(20 * 1024 * 1024, gt=0)
    recent_predictions: int = Field(2048, ge=0, description="predictions kept in memory for feedback")
    ort_threads: int = Field(0, ge=0, description="onnxruntime intra-op threads; 0 = the cores this process may use")
    ort_shared_pool: bool = Field(
        True,
        description="one process-wide onnxruntime thread pool (serving processes); it forbids "
        "sessions with their own threads later in the same process",
    )
    model_variant: Literal["fp32", "int8"] = Field("fp32", description="which ONNX file of a version to serve")
    batch_max_size: int = Field(16, ge=1, le=256, description="micro-batching: most images per session run")
    batch_max_wait_ms: float = Field(2.0, ge=0, le=100, description="micro-batching: wait for more while busy")
    batch_max_files: int = Field(32, ge=1, description="most files in one /v1/predict/batch request")
    admin_token: SecretStr | None = Field(None, description="bearer token for /v1/admin/*; unset = disabled")
    shadow_alias: str | None = Field(None, description="also follow this alias (e.g. candidate) and shadow-score")
    shadow_share: float = Field(0.1, ge=0, le=1, description="share of predictions also scored by the shadow")
    prediction_log: bool = Field(True, description="write each prediction to predictions/ in the store")
    log_flush_seconds: float = Field(5.0, gt=0, description="prediction log: most seconds between writes")
    log_batch_size: int = Field(1000, ge=1, description="prediction log: most records per file")

    # feedback
    feedback_per_minute: float = Field(30, gt=0, description="feedback reports a minute per client (per replica)")
    feedback_burst: int = Field(10, ge=1, description="feedback reports a client may send at once")
    feedback_min_agreeing_clients: int = Field(2, ge=1, description="independent clients needed to accept a claim")
    feedback_max_per_client: int = Field(50, ge=1, description="most images one client brings into a dataset version")
    outbox_flush_seconds: float = Field(5.0, gt=0, description="how often queued feedback is retried")

    @field_validator("store_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if "://" in value and not value.startswith(("file://", "s3://")):
            raise ValueError(f"store_url must be a folder, file://... or s3://bucket/prefix, got {value!r}")
        return value

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"file://{(self.home / 'store').resolve()}"

    @field_validator("model_alias", "shadow_alias")
    @classmethod
    def _alias_name(cls, value: str | None) -> str | None:
        if value is not None and not value.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"an alias is letters, digits, - and _, got {value!r}")
        return value

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    def open_store(self, url: str | None = None) -> ObjectStore:
        """The configured object store (or the one at ``url``, same S3 settings)."""
        return open_store(url or self.resolved_store_url, endpoint_url=self.s3_endpoint_url, region=self.s3_region)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, built once on first use (never at import)."""
    return Settings()
