"""The one typed settings class, read from the environment (prefix ``AIDETECT_``)."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PRODUCTION_ALIAS = "production"  # the alias serving follows and a blessed challenger moves
MIN_TOKEN_LENGTH = 16
PLACEHOLDERS = frozenset(
    {"changeme", "change_me", "change-me", "admin", "secret", "token", "password", "test", "example", "xxx", "todo"}
)


REPLICA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


class InvalidReplicaId(ValueError):
    """A replica id that is not a safe folder name."""


def check_replica_id(value: str) -> str:
    """``value`` if it is a safe folder name for a replica (1-63 letters, digits, ``.``, ``_``, ``-``)."""
    if not REPLICA_ID.fullmatch(value):
        raise InvalidReplicaId(
            f"replica id {value!r} is not a safe folder name: 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (set AIDETECT_REPLICA_ID, or it is the hostname)"
        )
    return value


class InsecureSettings(ValueError):
    """Settings that serving refuses to start with (outside the embedded default)."""


def placeholder_problem(token: str) -> str | None:
    """Why ``token`` is a placeholder rather than a secret (None when it looks like a real one)."""
    stripped = token.strip()
    if not stripped:
        return "empty"
    if stripped.lower() in PLACEHOLDERS or re.search(r"change[-_ ]?me", stripped, re.IGNORECASE):
        return "a placeholder"
    if stripped != token:
        return "padded with whitespace"
    if len(set(stripped)) == 1:
        return "one repeated character"
    if len(stripped) < MIN_TOKEN_LENGTH:
        return f"shorter than {MIN_TOKEN_LENGTH} characters"
    return None


class Settings(BaseSettings):
    """Everything configurable, with the embedded default (local folder store) as default."""

    # hide_input_in_errors: a ValidationError's text (a worker's traceback, a Prefect run's state message)
    # never echoes a value, so a bad webhook URL or token does not leak; `aidetect` names non-secret
    # values itself from .errors() (cli.main._settings_problem).
    model_config = SettingsConfigDict(env_prefix="AIDETECT_", env_file=None, extra="ignore", hide_input_in_errors=True)

    home: Path = Field(Path(".aidetect"), description="working folder: local store, caches, logs")
    store_url: str = Field(
        "",
        description="object store: a folder path or file:// URL (embedded default), or s3://bucket/prefix",
    )
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint (MinIO, moto); unset for AWS")
    s3_region: str = Field("us-east-1", description="S3 region (of the bucket, for AWS)")

    # serving
    model_alias: str = Field(PRODUCTION_ALIAS, description="the registry alias serving follows (and hot-swaps to)")
    alias_poll_seconds: float = Field(2.0, gt=0, description="how often serving reads its alias for a new version")
    drift_poll_seconds: float = Field(
        60.0, gt=0, description="how often the latest drift report (reports/drift/latest.json) is read for /metrics"
    )
    max_upload_bytes: int = Field(
        20 * 1024 * 1024,
        gt=0,
        description="largest accepted upload in bytes (per image file); larger ones are refused with 413",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="browser origins allowed cross-origin (comma-separated, e.g. https://app.example.com); "
        "empty (the default) = same-origin only, no CORS headers at all",
    )
    recent_predictions: int = Field(
        2048, ge=0, description="predictions cached in memory (in front of the store's recent/) for pages and feedback"
    )
    recent_retention_hours: float = Field(
        24.0,
        gt=0,
        description="how long a prediction's image, verdict and heatmaps (recent/) and the browser history items "
        "(history/) stay in the store, for every replica to answer for; then any replica's sweeper deletes them",
    )
    recent_sweep_seconds: float = Field(
        600.0, gt=0, description="how often a replica deletes recent/ and history/ keys past their retention"
    )
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
    admin_token: SecretStr | None = Field(
        None,
        description="bearer token for /v1/admin/*; unset = disabled (403). With an s3:// store, serving refuses "
        "to start on a placeholder token (empty, CHANGE_ME, admin, ..., or shorter than 16 characters)",
    )
    reviewer_token: SecretStr | None = Field(
        None,
        description="bearer token of the review page (/review) and its API (/v1/review/*); unset = review over "
        "HTTP disabled (403). With an s3:// store, serving refuses to start on a placeholder token, as for "
        "admin_token",
    )
    review_backlog_poll_seconds: float = Field(
        60.0,
        gt=0,
        description="how often the reports awaiting review are counted for /metrics (aidetect_review_backlog)",
    )
    shadow_alias: str | None = Field(None, description="also follow this alias (e.g. candidate) and shadow-score")
    shadow_share: float = Field(0.1, ge=0, le=1, description="share of predictions also scored by the shadow")
    prediction_log: bool = Field(True, description="write each prediction to predictions/ in the store")
    log_flush_seconds: float = Field(5.0, gt=0, description="prediction log: most seconds between writes")
    log_batch_size: int = Field(1000, ge=1, description="prediction log: most records per file")
    log_journal: bool = Field(
        True,
        description="prediction log: also journal each record on local disk as it is answered, so that a killed "
        "replica loses at most the last commit interval (off only to measure its cost)",
    )
    log_journal_commit_ms: float = Field(
        50.0,
        gt=0,
        le=1000,
        description="prediction log: the journal's group commit (write + fsync) interval in ms; a killed replica "
        "loses at most the predictions answered this long before (one fdatasync costs ~2 ms here, so 50 ms keeps "
        "the journal under 5 percent of the disk's time)",
    )

    replicas_dir: Path | None = Field(
        None,
        description="a folder shared by all replicas (a volume): each keeps its journal, spool and outbox under "
        "<dir>/<replica id>/, locked while it lives, and adopts a dead sibling's; unset = under the cache folder",
    )
    replica_id: str | None = Field(
        None, description="this replica's folder under replicas_dir; unset = the hostname (in compose the container id)"
    )
    adopt_seconds: float = Field(60.0, gt=0, description="how often a replica looks for dead siblings to adopt")

    # feedback
    feedback_per_minute: float = Field(30, gt=0, description="feedback reports a minute per client (per replica)")
    feedback_burst: int = Field(10, ge=1, description="feedback reports a client may send at once")
    feedback_min_agreeing_clients: int = Field(2, ge=1, description="independent clients needed to accept a claim")
    feedback_max_per_client: int = Field(50, ge=1, description="most images one client brings into a dataset version")
    outbox_flush_seconds: float = Field(5.0, gt=0, description="how often queued feedback is retried")

    # flows
    lease_ttl_seconds: float = Field(
        120.0,
        gt=0,
        description="a flow's lease in the store (locks/<name>.json, one retrain at a time) expires this long "
        "after its last renewal; the holder renews it every quarter of this, so a crashed run frees the flow "
        "within this time, and a holder cut off from the store this long stops before registering or promoting",
    )
    notify_webhook_url: SecretStr | None = Field(
        None,
        description="http(s) URL the Prefect automations post drift, blessed or rejected challengers and failed "
        "flow runs to, as JSON (flows/notifications.py; applied by `aidetect deploy` and `aidetect up`); "
        "unset = no automations",
    )

    public_url: str | None = Field(
        None,
        description="the address operators' browsers reach serving at (e.g. https://aidetect.example.com); "
        "the flows' Prefect artifacts show a model's plots and link the drift report from there. `aidetect up` "
        "sets it to the serving it starts; unset = the artifacts say where the files are in the store instead",
    )

    # process
    build: str = Field("dev", description="the code this process runs (the image's git sha); in /healthz")
    drain_seconds: float = Field(
        0.0,
        ge=0,
        le=600,
        description="on SIGTERM, keep serving this long with /healthz and /readyz answering 503, so a load "
        "balancer stops sending before the listener closes (rolling deploys); 0 = stop at once",
    )
    shutdown_timeout_seconds: int = Field(
        20, ge=1, le=600, description="after draining, most seconds to let requests in flight finish"
    )

    @field_validator("store_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if "://" in value and not value.startswith(("file://", "s3://")):
            raise ValueError(f"store_url must be a folder, file://... or s3://bucket/prefix, got {value!r}")
        return value

    @field_validator("notify_webhook_url", mode="before")
    @classmethod
    def _webhook_url(cls, value: object) -> object:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            value = value.strip()
            if not value:
                return None  # compose passes an unset .env value as ""
            if not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", value):
                raise ValueError("notify_webhook_url must be an http:// or https:// URL")
        return value

    @field_validator("reviewer_token", mode="before")
    @classmethod
    def _unset_reviewer_token(cls, value: object) -> object:
        return None if value == "" else value  # compose passes an unset .env value as ""; "  " stays refused

    @field_validator("public_url", mode="before")
    @classmethod
    def _public_url(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().rstrip("/")
            if not value:
                return None  # compose passes an unset .env value as ""
            if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
                raise ValueError(f"public_url must be an http:// or https:// URL without query, got {value!r}")
        return value

    @field_validator("replica_id")
    @classmethod
    def _replica_id(cls, value: str | None) -> str | None:
        return value if value is None else check_replica_id(value)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().rstrip("/") for part in value.split(",") if part.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origin_form(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(f"a CORS origin is scheme://host[:port] (or *), got {origin!r}")
        return value

    @property
    def embedded(self) -> bool:
        """The embedded default: the store is a local folder (no ``s3://`` store URL)."""
        return not self.store_url.startswith("s3://")

    def check_serving_security(self) -> None:
        """Refuse settings that are unsafe to serve with outside the embedded default.

        With an ``s3://`` store (a deployment), a set admin or reviewer token must not be a placeholder.
        Unset stays allowed everywhere: the admin endpoints (the review page) are then disabled (403).
        """
        if self.embedded:
            return
        for name, token, what in (
            ("AIDETECT_ADMIN_TOKEN", self.admin_token, "the admin endpoints"),
            ("AIDETECT_REVIEWER_TOKEN", self.reviewer_token, "the review page"),
        ):
            problem = None if token is None else placeholder_problem(token.get_secret_value())
            if problem:
                raise InsecureSettings(
                    f"{name} is {problem}; with an s3:// store serving will not start on it. "
                    f"Set a random token of at least {MIN_TOKEN_LENGTH} characters "
                    f"(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`) or unset it to disable "
                    f"{what}"
                )

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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, built once on first use (never at import)."""
    return Settings()
