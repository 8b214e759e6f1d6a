"""Turning botocore's exceptions into ours: no botocore exception leaves the AWS provider.

`aws_errors(action, node_type=..., zone=...)` is a context manager around every AWS call;
the error classes say what a caller may do next (retry later, try another zone or node
type, fix credentials).
"""
from __future__ import annotations

import contextlib

from botocore.exceptions import (BotoCoreError, ClientError, EndpointConnectionError,
                                 NoCredentialsError, NoRegionError, PartialCredentialsError,
                                 ConnectionClosedError, ReadTimeoutError, ConnectTimeoutError)

from launcher.errors import (CapacityError, NodeNotFoundError, ProviderAuthError,
                             ProviderError, QuotaError, RateLimitError)

# No room for this launch here now: another zone, subnet or node type may have it.
CAPACITY_CODES = frozenset({
    "InsufficientInstanceCapacity", "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity", "InsufficientCapacity",
    "InsufficientFreeAddressesInSubnet", "SpotMaxPriceTooLow",
    "Unsupported",  # this instance type is not offered in this zone
})
# An account limit: other (smaller) node types may still fit.
QUOTA_CODES = frozenset({
    "InstanceLimitExceeded", "VcpuLimitExceeded", "MaxSpotInstanceCountExceeded",
    "VolumeLimitExceeded", "AddressLimitExceeded", "MaxIOPSLimitExceeded",
    "ResourceLimitExceeded", "LimitExceeded",
})
AUTH_CODES = frozenset({
    "UnauthorizedOperation", "AuthFailure", "InvalidClientTokenId", "SignatureDoesNotMatch",
    "ExpiredToken", "ExpiredTokenException", "AccessDenied", "AccessDeniedException",
    "UnrecognizedClientException", "OptInRequired", "Blocked", "InvalidAccessKeyId",
})
THROTTLE_CODES = frozenset({
    "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
    "RequestThrottled", "RequestThrottledException",
})
NOT_FOUND_CODES = frozenset({"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"})


def error_code(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "Unknown")


def translate_client_error(error: ClientError, action: str, *, node_type: str | None = None,
                           zone: str | None = None) -> ProviderError:
    code = error_code(error)
    text = error.response.get("Error", {}).get("Message", "") or str(error)
    message = f"AWS {action} failed: {code}: {text}"
    kwargs = {"node_type": node_type, "zone": zone, "cause": code}
    if code in CAPACITY_CODES:
        # "Unsupported": waiting does not help; another zone may.
        return CapacityError(message, retryable=False if code == "Unsupported" else None,
                             **kwargs)
    if code in QUOTA_CODES:
        return QuotaError(message, **kwargs)
    if code in AUTH_CODES:
        return ProviderAuthError(
            message + " (check the AWS credentials and their permissions)", **kwargs)
    if code in THROTTLE_CODES:
        return RateLimitError(message, **kwargs)
    if code in NOT_FOUND_CODES:
        return NodeNotFoundError(message, **kwargs)
    return ProviderError(message, **kwargs)


def translate(error: Exception, action: str, *, node_type: str | None = None,
              zone: str | None = None) -> ProviderError:
    """Any botocore exception as one of our ProviderErrors."""
    kwargs = {"node_type": node_type, "zone": zone}
    if isinstance(error, ClientError):
        return translate_client_error(error, action, **kwargs)
    if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
        return ProviderAuthError(
            f"AWS {action}: no usable AWS credentials ({error}); configure them with "
            "`aws configure`, AWS_PROFILE, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
            cause=type(error).__name__, **kwargs)
    if isinstance(error, NoRegionError):
        return ProviderError(f"AWS {action}: no region (set provider.region)",
                             cause="NoRegionError", **kwargs)
    connection = isinstance(error, (EndpointConnectionError, ConnectionClosedError,
                                    ReadTimeoutError, ConnectTimeoutError))
    return ProviderError(f"AWS {action} failed: {error}", cause=type(error).__name__,
                         retryable=True if connection else None, **kwargs)


@contextlib.contextmanager
def aws_errors(action: str, *, node_type: str | None = None, zone: str | None = None):
    """Run AWS calls; re-raise any botocore exception as our ProviderError."""
    try:
        yield
    except (ClientError, BotoCoreError) as error:
        raise translate(error, action, node_type=node_type, zone=zone) from error
