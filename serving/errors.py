"""The API's error bodies: ``{"detail": message}`` as documented (``PROBLEM``), and the one
handler that turns an unavailable object store into a 503."""

from __future__ import annotations

from fastapi import Request, status
from fastapi.responses import JSONResponse

PROBLEM = {"model": dict[str, str], "description": "a JSON body {detail: message}"}


async def store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """A ``storage.StoreError`` a route lets through: 503, in the shape of an ``HTTPException``'s body."""
    return JSONResponse({"detail": f"object store unavailable: {exc}"}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
