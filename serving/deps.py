"""What the routes depend on: the serving state, the live model, the admin check, and who the
client is (its hashed address, its browser's cookie)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, Response, status

from feedback.records import hash_client
from serving.history import COOKIE
from serving.hotswap import LiveModel
from serving.state import ServingState


def _state(request: Request) -> ServingState:
    return request.app.state.serving  # type: ignore[no-any-return]


StateDep = Annotated[ServingState, Depends(_state)]


def _live_model(state: StateDep) -> LiveModel:
    live = state.holder.current
    if live is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no model is loaded yet; try again shortly")
    return live


LiveModelDep = Annotated[LiveModel, Depends(_live_model)]


def require_admin(state: StateDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """A bearer token equal to ``AIDETECT_ADMIN_TOKEN``: 403 while none is set, 401 without it."""
    token = state.settings.admin_token
    if token is None or not token.get_secret_value():
        raise HTTPException(status.HTTP_403_FORBIDDEN, "admin endpoints are disabled: set AIDETECT_ADMIN_TOKEN")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "a valid admin token is required", headers={"WWW-Authenticate": "Bearer"}
        )


AdminDep = Depends(require_admin)


def client_fingerprint(request: Request) -> str:
    """A hashed client address: what makes two reports independent, and what rate limits count.

    The address only: a user agent is whatever the client says it is. Behind a reverse proxy,
    run uvicorn with ``--proxy-headers --forwarded-allow-ips <proxy>`` so that this is the
    client's address, not the proxy's.
    """
    return hash_client(request.client.host if request.client else "unknown")


def browser(request: Request, response: Response) -> str:
    """This browser's random id (set as a cookie on first use)."""
    browser = request.cookies.get(COOKIE, "")
    if not (len(browser) == 32 and all(c in "0123456789abcdef" for c in browser)):
        browser = secrets.token_hex(16)
        response.set_cookie(COOKIE, browser, max_age=365 * 24 * 3600, httponly=True, samesite="lax")
    return browser
