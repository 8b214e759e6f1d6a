"""The head node's identity when the user names none: a service account `corral-head`
holding one custom role `corralAutoscaler` whose permissions are exactly the compute
actions the autoscaler on the head performs (never roles/compute.admin). Workers get no
service account, so the head never needs iam.serviceAccounts.actAs.

All three steps are idempotent: get, create when missing, fix when different.
"""
from __future__ import annotations

import time

from launcher.errors import ProviderError
from launcher.providers.gcp import naming
from launcher.providers.gcp.client import GCEClient

# What the monitor on the head calls: create/list/tag/delete worker instances and wait on
# their zone operations; creating an instance also creates its boot disk, uses the subnet
# (and an external IP), reads the image and machine type, and sets labels, metadata and
# network tags.
AUTOSCALER_PERMISSIONS = (
    "compute.disks.create",
    "compute.images.useReadOnly",
    "compute.instances.create",
    "compute.instances.delete",
    "compute.instances.get",
    "compute.instances.list",
    "compute.instances.setLabels",
    "compute.instances.setMetadata",
    "compute.instances.setTags",
    "compute.machineTypes.get",
    "compute.subnetworks.use",
    "compute.subnetworks.useExternalIp",
    "compute.zoneOperations.get",
)
ROLE_TITLE = "corral autoscaler"
ROLE_DESCRIPTION = ("Lets a corral head node create, list, label and delete its cluster's "
                    "worker instances. Made by corral.")
POLICY_ATTEMPTS = 5


def role_document(project: str) -> dict:
    """The custom role as IAM wants it in roles.create."""
    return {"roleId": naming.ROLE_ID,
            "role": {"title": ROLE_TITLE, "description": ROLE_DESCRIPTION, "stage": "GA",
                     "includedPermissions": list(AUTOSCALER_PERMISSIONS)}}


def ensure_role(client: GCEClient, project: str) -> str:
    name = naming.role_name(project)
    roles = lambda: client.iam.projects().roles()  # noqa: E731
    role = client.execute(lambda: roles().get(name=name), what=f"reading role {name}",
                          not_found_ok=True)
    if role is None:
        client.execute(lambda: roles().create(parent=f"projects/{project}",
                                              body=role_document(project)),
                       what=f"creating role {name}")
    elif sorted(role.get("includedPermissions") or []) != sorted(AUTOSCALER_PERMISSIONS):
        client.execute(lambda: roles().patch(
            name=name, updateMask="includedPermissions",
            body={"includedPermissions": list(AUTOSCALER_PERMISSIONS)}),
            what=f"updating role {name}")
    return name


def ensure_head_account(client: GCEClient, project: str) -> str:
    email = naming.head_account_email(project)
    accounts = lambda: client.iam.projects().serviceAccounts()  # noqa: E731
    found = client.execute(lambda: accounts().get(name=f"projects/{project}/serviceAccounts/{email}"),
                           what=f"reading service account {email}", not_found_ok=True)
    if found is None:
        try:
            client.execute(lambda: accounts().create(
                name=f"projects/{project}",
                body={"accountId": naming.HEAD_ACCOUNT_ID,
                      "serviceAccount": {"displayName": "corral head node",
                                         "description": "Runs the corral autoscaler."}}),
                what=f"creating service account {email}")
        except ProviderError as error:
            if "alreadyExists" not in (error.cause or ""):  # made meanwhile: fine
                raise
    return email


def ensure_binding(client: GCEClient, project: str, email: str, role: str) -> bool:
    """Grant `role` to the account on the project. Returns True when the policy changed."""
    member = f"serviceAccount:{email}"
    projects = lambda: client.resource_manager.projects()  # noqa: E731
    for attempt in range(1, POLICY_ATTEMPTS + 1):
        policy = client.execute(
            lambda: projects().getIamPolicy(
                resource=project, body={"options": {"requestedPolicyVersion": 3}}),
            what=f"reading the IAM policy of {project}")
        bindings = policy.setdefault("bindings", [])
        for binding in bindings:
            if binding.get("role") == role and not binding.get("condition"):
                if member in binding.get("members", []):
                    return False
                binding.setdefault("members", []).append(member)
                break
        else:
            bindings.append({"role": role, "members": [member]})
        try:
            client.execute(lambda: projects().setIamPolicy(resource=project,
                                                           body={"policy": policy}),
                           what=f"granting {role} to {email}")
            return True
        except ProviderError as error:
            # An etag race with another writer (409 ABORTED): read again. A service account
            # made seconds ago may not be visible to IAM policies yet (400 "does not
            # exist"): wait a little and try again.
            raced = "aborted" in (error.cause or "").lower()
            young = "does not exist" in str(error)
            if not (raced or young) or attempt == POLICY_ATTEMPTS:
                raise
            if young:
                time.sleep(client.backoff_s(attempt))
    return False


def ensure_head_identity(client: GCEClient, project: str) -> str:
    """The head's service account email, with the autoscaler role granted."""
    role = ensure_role(client, project)
    email = ensure_head_account(client, project)
    ensure_binding(client, project, email, role)
    return email
