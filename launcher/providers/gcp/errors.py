"""Google API failures -> our error tree (launcher.errors), with what a retry needs.

Two shapes reach us: an HttpError raised by a request, and the `error` of a finished zone
or global operation (ZONE_RESOURCE_POOL_EXHAUSTED usually arrives this way).
"""
from __future__ import annotations

import json
from typing import Any, Mapping

from launcher.errors import (CapacityError, NodeNotFoundError, ProviderAuthError,
                             ProviderError, QuotaError, RateLimitError)

CAPACITY_CODES = frozenset({
    "ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
    "RESOURCE_POOL_EXHAUSTED", "resourcePoolExhausted", "zoneResourcePoolExhausted",
})
QUOTA_CODES = frozenset({"QUOTA_EXCEEDED", "quotaExceeded"})
RATE_LIMIT_CODES = frozenset({"rateLimitExceeded", "userRateLimitExceeded", "RATE_LIMIT_EXCEEDED"})
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


def http_error_details(error) -> tuple[int, list[str], str]:
    """(HTTP status, reason/code strings, message) of a googleapiclient HttpError."""
    status = int(getattr(getattr(error, "resp", None), "status", 0) or 0)
    content = getattr(error, "content", b"") or b""
    try:
        body = json.loads(content.decode("utf-8", "replace") if isinstance(content, bytes)
                          else content)
    except ValueError:
        body = {}
    payload = body.get("error", {}) if isinstance(body, dict) else {}
    if not isinstance(payload, dict):
        payload = {"message": str(payload)}
    codes = [str(item.get("reason") or item.get("code") or "")
             for item in payload.get("errors", []) if isinstance(item, dict)]
    if payload.get("status"):
        codes.append(str(payload["status"]))
    message = str(payload.get("message") or getattr(error, "reason", "") or error)
    return status, [code for code in codes if code], message


def is_rate_limited(status: int, codes: list[str]) -> bool:
    return status == 429 or bool(RATE_LIMIT_CODES.intersection(codes))


# The resource has another operation in flight (e.g. a delete of an instance still being
# deleted): worth asking again shortly.
NOT_READY_CODES = frozenset({"resourceNotReady", "RESOURCE_NOT_READY"})


def is_retryable(status: int, codes: list[str]) -> bool:
    """Throttling, server errors and busy resources are retried in place; capacity and
    quota are not (the caller moves on to another zone or node type instead)."""
    if CAPACITY_CODES.intersection(codes) or QUOTA_CODES.intersection(codes):
        return False
    return (status in RETRYABLE_STATUS or is_rate_limited(status, codes)
            or bool(NOT_READY_CODES.intersection(codes)))


def translate_http_error(error, *, what: str, node_type: str | None = None,
                         zone: str | None = None) -> ProviderError:
    status, codes, message = http_error_details(error)
    text = f"{what}: {message}"
    kwargs = {"node_type": node_type, "zone": zone, "cause": ",".join(codes) or str(status)}
    if CAPACITY_CODES.intersection(codes):
        return CapacityError(text, **kwargs)
    if QUOTA_CODES.intersection(codes):
        return QuotaError(text, **kwargs)
    if is_rate_limited(status, codes):
        return RateLimitError(text, **kwargs)
    if status in (401, 403):
        return ProviderAuthError(
            f"{text} (check the credentials and that the account may use project "
            f"resources; HTTP {status})", **kwargs)
    if status == 404:
        return NodeNotFoundError(text, **kwargs)
    return ProviderError(f"{text} (HTTP {status})", **kwargs)


def translate_operation_error(operation: Mapping[str, Any], *, what: str,
                              node_type: str | None = None,
                              zone: str | None = None) -> ProviderError:
    errors = (operation.get("error") or {}).get("errors") or []
    codes = [str(item.get("code", "")) for item in errors]
    message = "; ".join(str(item.get("message") or item.get("code")) for item in errors)
    text = f"{what}: {message or 'operation failed'}"
    kwargs = {"node_type": node_type, "zone": zone, "cause": ",".join(codes)}
    if CAPACITY_CODES.intersection(codes):
        return CapacityError(text, **kwargs)
    if QUOTA_CODES.intersection(codes):
        return QuotaError(text, **kwargs)
    if RATE_LIMIT_CODES.intersection(codes):
        return RateLimitError(text, **kwargs)
    if {"PERMISSION_DENIED", "FORBIDDEN", "UNAUTHENTICATED"}.intersection(codes):
        return ProviderAuthError(text, **kwargs)
    return ProviderError(text, **kwargs)
