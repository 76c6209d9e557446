"""The model registry in the object store: immutable versions, aliases, an event log.

``models/<version>/`` holds the files; ``metadata.json`` is written last with a
create-only put, so a version exists once its metadata does and is never overwritten.
Aliases (``registry/aliases/<alias>.json``) move by conditional put: of two concurrent
promotions from the same state, exactly one wins.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aidetect.settings import PRODUCTION_ALIAS
from model.card import CANARIES_FILE, INT8_FILE, KERAS_FILE, METADATA_FILE, ONNX_FILE, ModelCard
from storage import NotFound, ObjectStore, PreconditionFailed
from storage.layout import EVENTS, MODELS, alias_key, event_key, model_prefix, new_version_id, utcnow

__all__ = [
    "CANARIES_FILE",
    "INT8_FILE",
    "KERAS_FILE",
    "METADATA_FILE",
    "ONNX_FILE",
    "AliasConflict",
    "AliasRecord",
    "ModelCard",
    "Registry",
]


class AliasConflict(Exception):
    """Somebody else moved the alias since we read it."""


@dataclass(frozen=True)
class AliasRecord:
    version: str
    sha256: str
    updated_at: str
    reason: str
    previous: str | None


class Registry:
    def __init__(self, store: ObjectStore):
        self.store = store

    # versions ---------------------------------------------------------------------------
    def register(self, files: dict[str, Path | bytes], card: ModelCard) -> str:
        """Upload the files of a new version, then its card. Returns the version id."""
        if ONNX_FILE not in files:
            raise ValueError(f"a model version needs {ONNX_FILE}")
        version = new_version_id()
        prefix = model_prefix(version)
        hashes = {}
        for name, content in files.items():
            data = content.read_bytes() if isinstance(content, Path) else content
            hashes[name] = hashlib.sha256(data).hexdigest()
            self.store.put(prefix + name, data, if_none_match=True)
        card = card.model_copy(
            update={
                "version": version,
                "registered_at": utcnow().isoformat(),
                "sha256": hashes[ONNX_FILE],
                "files": hashes,
            }
        )
        self.store.put(prefix + METADATA_FILE, card.to_json(), if_none_match=True)
        self.record_event("registered", version)
        return version

    def versions(self) -> list[str]:
        """Registered versions, oldest first."""
        return sorted(
            key.split("/")[1]
            for key in self.store.list(MODELS)
            if key.count("/") == 2 and key.endswith("/" + METADATA_FILE)
        )

    def metadata(self, version: str) -> ModelCard:
        """The card of a registered version."""
        try:
            return ModelCard.model_validate_json(self.store.get(model_prefix(version) + METADATA_FILE))
        except NotFound:
            raise NotFound(f"model version {version!r} is not registered") from None

    def download(self, version: str, name: str, dest: Path) -> Path:
        self.store.download(model_prefix(version) + name, dest)
        return dest

    def canaries(self, version: str) -> dict[str, np.ndarray]:
        with np.load(io.BytesIO(self.store.get(model_prefix(version) + CANARIES_FILE))) as data:
            return {k: data[k] for k in data.files}

    # aliases ----------------------------------------------------------------------------
    def alias(self, alias: str = PRODUCTION_ALIAS) -> tuple[AliasRecord | None, str | None]:
        """The alias record and its entity tag (None, None when the alias was never set)."""
        try:
            data, etag = self.store.get_with_etag(alias_key(alias))
        except NotFound:
            return None, None
        return AliasRecord(**json.loads(data)), etag

    def promote(
        self, version: str, alias: str = PRODUCTION_ALIAS, *, reason: str, kind: str = "promoted"
    ) -> AliasRecord:
        """Point ``alias`` at ``version`` with a conditional put; AliasConflict if we lost a race."""
        meta = self.metadata(version)
        current, etag = self.alias(alias)
        record = AliasRecord(
            version=version,
            sha256=meta.sha256,
            updated_at=utcnow().isoformat(),
            reason=reason,
            previous=current.version if current else None,
        )
        body = json.dumps(asdict(record), indent=2).encode()
        try:
            if etag is None:
                self.store.put(alias_key(alias), body, if_none_match=True)
            else:
                self.store.put(alias_key(alias), body, if_match=etag)
        except PreconditionFailed as exc:
            raise AliasConflict(f"alias {alias!r} moved while promoting {version}: {exc}") from exc
        self.record_event(kind, version, alias=alias, previous=record.previous, reason=reason)
        return record

    def rollback(self, alias: str = PRODUCTION_ALIAS, *, reason: str = "rollback") -> AliasRecord:
        current, _ = self.alias(alias)
        if current is None or current.previous is None:
            raise ValueError(f"alias {alias!r} has no previous version to roll back to")
        return self.promote(current.previous, alias, reason=reason, kind="rolled_back")

    # events -----------------------------------------------------------------------------
    def record_event(self, kind: str, version: str | None, **details: Any) -> None:
        now = utcnow()
        event = {"kind": kind, "version": version, "at": now.isoformat(), **details}
        self.store.put(event_key(now, secrets.token_hex(4)), json.dumps(event).encode(), if_none_match=True)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(self.store.get(key)) for key in self.store.list(EVENTS)]
