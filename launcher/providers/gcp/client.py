"""One authenticated connection to the Google APIs corral uses (compute v1, iam v1,
cloudresourcemanager v1): credentials, bounded retries, operation waits.

Clients are built from the discovery documents that ship with google-api-python-client
(static discovery: no network at build time). httplib2 is not thread-safe, so every thread
executes requests over its own authorised connection.
"""
from __future__ import annotations

import random
import threading
import time
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from launcher.errors import ProviderAuthError, ProviderError, RateLimitError
from launcher.providers.gcp.errors import (http_error_details, is_rate_limited, is_retryable,
                                           translate_http_error, translate_operation_error)

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
HTTP_TIMEOUT_S = 60.0


def load_credentials(provider: Mapping[str, Any]):
    """Credentials for the provider block: a service-account file, anonymous when a custom
    compute_endpoint is set without a file, else Application Default Credentials."""
    import google.auth
    from google.auth import exceptions as auth_exceptions
    from google.auth.credentials import AnonymousCredentials

    credentials_file = provider.get("credentials_file")
    if credentials_file:
        from google.oauth2 import service_account
        try:
            return service_account.Credentials.from_service_account_file(
                str(credentials_file), scopes=list(SCOPES))
        except (OSError, ValueError) as error:
            raise ProviderAuthError(
                f"cannot read the service-account key in provider.credentials_file "
                f"{credentials_file}: {error}") from None
    if provider.get("compute_endpoint"):
        return AnonymousCredentials()
    try:
        credentials, _project = google.auth.default(scopes=list(SCOPES))
    except auth_exceptions.DefaultCredentialsError as error:
        raise ProviderAuthError(
            "no Google Cloud credentials found. Either run "
            "`gcloud auth application-default login`, set GOOGLE_APPLICATION_CREDENTIALS to "
            "a service-account key file, or set provider.credentials_file in the cluster "
            f"YAML. ({error})") from None
    return credentials


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/"


class GCEClient:
    """Executes Google API requests with retries and translates failures."""

    max_attempts = 6
    backoff_base_s = 0.5
    backoff_max_s = 8.0
    poll_interval_s = 0.2

    def __init__(self, provider: Mapping[str, Any], credentials=None):
        self.provider = provider
        self.project = provider["project_id"]
        self.credentials = credentials if credentials is not None else load_credentials(provider)
        self._local = threading.local()
        self._services: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- services -----------------------------------------------------------------------
    def _endpoint(self, api: str) -> str | None:
        compute = self.provider.get("compute_endpoint")
        if api == "compute":
            return compute
        own = self.provider.get({"iam": "iam_endpoint",
                                 "cloudresourcemanager": "resource_manager_endpoint"}[api])
        return own or (_origin(compute) if compute else None)

    def service(self, api: str):
        with self._lock:
            if api not in self._services:
                from googleapiclient import discovery
                version = "v1"
                endpoint = self._endpoint(api)
                options = {"api_endpoint": endpoint} if endpoint else None
                self._services[api] = discovery.build(
                    api, version, http=self._http(), client_options=options,
                    static_discovery=True, cache_discovery=False)
            return self._services[api]

    @property
    def compute(self):
        return self.service("compute")

    @property
    def iam(self):
        return self.service("iam")

    @property
    def resource_manager(self):
        return self.service("cloudresourcemanager")

    def _http(self):
        http = getattr(self._local, "http", None)
        if http is None:
            import google_auth_httplib2
            import httplib2
            http = google_auth_httplib2.AuthorizedHttp(
                self.credentials, http=httplib2.Http(timeout=HTTP_TIMEOUT_S))
            self._local.http = http
        return http

    # -- requests -----------------------------------------------------------------------
    def execute(self, make_request: Callable[[], Any], *, what: str,
                node_type: str | None = None, zone: str | None = None,
                not_found_ok: bool = False) -> Any:
        """Run a request, retrying throttling and server errors with bounded, jittered
        back-off. Returns None for a 404 when not_found_ok."""
        import httplib2
        from google.auth import exceptions as auth_exceptions
        from googleapiclient.errors import HttpError

        for attempt in range(1, self.max_attempts + 1):
            try:
                return make_request().execute(http=self._http(), num_retries=0)
            except HttpError as error:
                status, codes, _message = http_error_details(error)
                if status == 404 and not_found_ok:
                    return None
                if is_retryable(status, codes) and attempt < self.max_attempts:
                    time.sleep(self.backoff_s(attempt))
                    continue
                translated = translate_http_error(error, what=what, node_type=node_type,
                                                  zone=zone)
                if is_rate_limited(status, codes):
                    translated = RateLimitError(
                        f"{translated} (still throttled after {attempt} attempts)",
                        node_type=node_type, zone=zone, cause=translated.cause)
                raise translated from None
            except auth_exceptions.GoogleAuthError as error:
                raise ProviderAuthError(f"{what}: {error}") from None
            except (OSError, httplib2.HttpLib2Error) as error:
                if attempt < self.max_attempts:
                    time.sleep(self.backoff_s(attempt))
                    continue
                raise ProviderError(f"{what}: cannot reach the API: {error}",
                                    node_type=node_type, zone=zone) from None
        raise AssertionError("unreachable")

    def backoff_s(self, attempt: int) -> float:
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    # -- operations ---------------------------------------------------------------------
    def wait_operation(self, operation: Mapping[str, Any], *, timeout_s: float, what: str,
                       node_type: str | None = None, raise_on_error: bool = True
                       ) -> Mapping[str, Any]:
        """Wait (bounded) until a zone or global operation is DONE; raise its error
        translated unless raise_on_error is False."""
        zone_url = operation.get("zone")
        zone = zone_url.rsplit("/", 1)[-1] if zone_url else None
        deadline = time.monotonic() + timeout_s
        current = operation
        while current.get("status") != "DONE":
            if time.monotonic() > deadline:
                raise ProviderError(
                    f"{what}: operation {operation.get('name')} did not finish within "
                    f"{timeout_s:g} s", node_type=node_type, zone=zone, cause="timeout")
            name = current["name"]
            if zone:
                request = lambda: self.compute.zoneOperations().wait(  # noqa: E731
                    project=self.project, zone=zone, operation=name)
            else:
                request = lambda: self.compute.globalOperations().wait(  # noqa: E731
                    project=self.project, operation=name)
            current = self.execute(request, what=what, node_type=node_type, zone=zone)
            if current.get("status") != "DONE":
                time.sleep(self.poll_interval_s)
        if raise_on_error and current.get("error"):
            raise translate_operation_error(current, what=what, node_type=node_type, zone=zone)
        return current
