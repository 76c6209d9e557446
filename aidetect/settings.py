"""The one typed settings class, read from the environment (prefix ``AIDETECT_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
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
    ort_threads: int = Field(0, ge=0, description="onnxruntime intra-op threads; 0 = all cores")

    @field_validator("store_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if "://" in value and not value.startswith(("file://", "s3://")):
            raise ValueError(f"store_url must be a folder, file://... or s3://bucket/prefix, got {value!r}")
        return value

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"file://{(self.home / 'store').resolve()}"

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
