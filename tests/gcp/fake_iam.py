"""The IAM and Resource Manager part of the fake (custom roles, service accounts, the
project IAM policy), on the same state object and lock as the compute part."""
from __future__ import annotations

import json

from tests.gcp.fake_gce_state import FakeGCEState, FakeHTTPError, fingerprint


def get_role(state: FakeGCEState, name: str) -> dict:
    with state.lock:
        state._take_injection("roles.get", None)
        if name not in state.roles:
            raise FakeHTTPError(404, "notFound", f"role {name} not found")
        return json.loads(json.dumps(state.roles[name]))


def create_role(state: FakeGCEState, parent: str, body: dict) -> dict:
    with state.lock:
        state._take_injection("roles.create", None)
        name = f"{parent}/roles/{body.get('roleId')}"
        if name in state.roles:
            raise FakeHTTPError(409, "alreadyExists", f"role {name} already exists")
        role = dict(body.get("role") or {}, name=name)
        role["etag"] = fingerprint(role)
        state.roles[name] = role
        return json.loads(json.dumps(role))


def patch_role(state: FakeGCEState, name: str, update_mask: str, body: dict) -> dict:
    with state.lock:
        state._take_injection("roles.patch", None)
        if name not in state.roles:
            raise FakeHTTPError(404, "notFound", f"role {name} not found")
        role = state.roles[name]
        for field in (update_mask or "").split(","):
            if field.strip() and field.strip() in body:
                role[field.strip()] = body[field.strip()]
        role["etag"] = fingerprint({k: v for k, v in role.items() if k != "etag"})
        return json.loads(json.dumps(role))


def get_service_account(state: FakeGCEState, name: str) -> dict:
    email = name.rsplit("/", 1)[-1]
    with state.lock:
        state._take_injection("serviceAccounts.get", None)
        if email not in state.service_accounts:
            raise FakeHTTPError(404, "notFound", f"service account {email} not found")
        return dict(state.service_accounts[email])


def create_service_account(state: FakeGCEState, parent: str, body: dict) -> dict:
    project = parent.rsplit("/", 1)[-1]
    account_id = body.get("accountId", "")
    email = f"{account_id}@{project}.iam.gserviceaccount.com"
    with state.lock:
        state._take_injection("serviceAccounts.create", None)
        if email in state.service_accounts:
            raise FakeHTTPError(409, "alreadyExists", f"service account {email} already exists")
        account = dict(body.get("serviceAccount") or {}, email=email,
                       name=f"projects/{project}/serviceAccounts/{email}", projectId=project)
        state.service_accounts[email] = account
        return dict(account)


def get_policy(state: FakeGCEState, project: str) -> dict:
    with state.lock:
        state._take_injection("projects.getIamPolicy", None)
        policy = state.policies.setdefault(project, {"version": 1, "bindings": []})
        policy["etag"] = fingerprint(policy.get("bindings"))
        return json.loads(json.dumps(policy))


def set_policy(state: FakeGCEState, project: str, body: dict) -> dict:
    with state.lock:
        state._take_injection("projects.setIamPolicy", None)
        current = state.policies.setdefault(project, {"version": 1, "bindings": []})
        new = dict(body.get("policy") or {})
        if new.get("etag") != fingerprint(current.get("bindings")):
            raise FakeHTTPError(409, "aborted", "There were concurrent policy changes.")
        new["etag"] = fingerprint(new.get("bindings"))
        state.policies[project] = new
        return json.loads(json.dumps(new))
