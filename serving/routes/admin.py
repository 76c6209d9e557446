"""Operator actions behind ``AIDETECT_ADMIN_TOKEN``: ``POST /v1/admin/reload`` and ``/v1/admin/rollback``.

An unreachable object store is the app's 503 (``serving.errors.store_unavailable``).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, status

from model.registry import AliasConflict
from serving.deps import AdminDep, StateDep
from serving.errors import PROBLEM
from serving.schemas import AdminOut
from serving.state import in_loader

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[AdminDep])


@router.post("/reload", response_model=AdminOut, responses={401: PROBLEM, 403: PROBLEM, 503: PROBLEM})
async def admin_reload(state: StateDep) -> AdminOut:
    """Follow the alias now, retrying versions refused earlier."""
    changed = await in_loader(state, lambda: state.holder.refresh(force=True))
    live = state.holder.current
    return AdminOut(changed=changed, version=live.version if live else None, last_error=state.holder.last_error)


@router.post("/rollback", response_model=AdminOut, responses={401: PROBLEM, 403: PROBLEM, 409: PROBLEM, 503: PROBLEM})
async def admin_rollback(state: StateDep) -> AdminOut:
    """Point the alias back at its previous version (for every replica) and swap to it here."""
    holder = state.holder
    try:
        record = await asyncio.to_thread(holder.registry.rollback, holder.alias, reason="admin rollback via API")
        changed = await in_loader(state, holder.refresh)
    except (ValueError, AliasConflict) as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    live = holder.current
    return AdminOut(
        changed=changed,
        version=live.version if live else None,
        alias_version=record.version,
        last_error=holder.last_error,
    )
