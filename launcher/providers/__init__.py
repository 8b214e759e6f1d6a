"""Node providers. `make_provider(config)` picks one by `provider.type`.

Each provider lives in its own module, imported only when used so that `corral` starts
fast and a missing cloud SDK never breaks the other providers.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from launcher.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from launcher.config.load import ClusterConfig
    from launcher.providers.base import NodeProvider

# provider.type -> the setup.cfg extra that brings its cloud SDK
SDK_EXTRAS = {"aws": ("aws", ("boto3", "botocore")),
              "gcp": ("gcp", ("googleapiclient", "google", "google_auth_httplib2"))}

# provider.type -> "module:ClassName"
PROVIDERS = {
    "process": "launcher.providers.process:ProcessProvider",
    "local": "launcher.providers.local:LocalProvider",
    "aws": "launcher.providers.aws:AWSProvider",
    "gcp": "launcher.providers.gcp:GCPProvider",
}


def provider_class(provider_type: str) -> type["NodeProvider"]:
    try:
        target = PROVIDERS[provider_type]
    except KeyError:
        raise UsageError(f"unknown provider type {provider_type!r}; "
                         f"known: {', '.join(sorted(PROVIDERS))}") from None
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        extra, sdk_modules = SDK_EXTRAS.get(provider_type, ("", ()))
        if (error.name or "").split(".")[0] in sdk_modules:
            raise UsageError(f"the {provider_type} provider needs its SDK ({error.name} is "
                             f"not installed); install it with: "
                             f"pip install 'corral[{extra}]'") from None
        raise
    return getattr(module, class_name)


def make_provider(config: "ClusterConfig") -> "NodeProvider":
    return provider_class(config.provider["type"])(config)
