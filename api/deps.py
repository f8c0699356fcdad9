"""Dependencies of the routes, as ``Annotated`` aliases (one place for auth and limits)."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, Header, Path, Query, Request

from api.config import Settings
from api.service import ServiceError, StudyService

MAX_ID = 2**31 - 1  # ids are 32-bit integers in every backend: larger ones are a 4xx, not a 500


def get_service(request: Request) -> StudyService:
    return request.app.state.service  # type: ignore[no-any-return]


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_executor(request: Request) -> Any:
    return request.app.state.executor


def require_token(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    """Mutating endpoints need ``Authorization: Bearer <token>`` when a token is set."""
    token = request.app.state.settings.api_token
    if not token:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        raise ServiceError(
            401, "missing or wrong bearer token (Authorization: Bearer <token>)", "unauthorized"
        )


ServiceDep = Annotated[StudyService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ExecutorDep = Annotated[Any, Depends(get_executor)]
Authorized = Depends(require_token)
StudyId = Annotated[int, Path(ge=1, le=MAX_ID, description="study id")]
TrialId = Annotated[int, Path(ge=1, le=MAX_ID, description="trial id")]
Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]
Offset = Annotated[int, Query(ge=0, le=MAX_ID)]
