"""The cluster's EC2 key pair.

Three cases: `provider.key_name` names an existing pair (the user's private key is in
auth.ssh_private_key); auth.ssh_private_key alone (corral imports its public half as the
cluster's pair); neither (corral creates an ed25519 pair and keeps the private key, 0600,
in ~/.corral/clusters/<name>/ssh-key.pem).
"""
from __future__ import annotations

from pathlib import Path

import paramiko

from launcher import paths
from launcher.errors import ConfigError, ProviderError
from launcher.providers.aws import naming
from launcher.providers.aws.errors import aws_errors


def public_key_of(private_key_path: str | Path) -> str:
    """'<type> <base64>' of a private key file (or of its .pub neighbour)."""
    path = Path(private_key_path).expanduser()
    pub = path.with_name(path.name + ".pub")
    if pub.exists():
        return " ".join(pub.read_text().split()[:2])
    try:
        key = paramiko.PKey.from_path(path)
    except (OSError, paramiko.SSHException, ValueError) as error:
        raise ConfigError("auth.ssh_private_key", None,
                          f"cannot read the private key {path}: {error}") from None
    return f"{key.get_name()} {key.get_base64()}"


def _same_key(a: str | None, b: str | None) -> bool:
    return bool(a and b) and a.split()[:2] == b.split()[:2]


def ensure_key_pair(ec2, config) -> tuple[str, str]:
    """Returns (KeyName, path of the private key) for the cluster, creating what is missing."""
    cluster = config.cluster_name
    user_key = config.auth.ssh_private_key
    key_name = config.provider.get("key_name")
    if key_name:
        if not user_key:
            raise ConfigError("auth.ssh_private_key", None,
                              f"provider.key_name names the existing key pair {key_name!r}; "
                              "set auth.ssh_private_key to the path of its private key",
                              source=config.source_path)
        return key_name, user_key
    name = naming.key_pair_name(cluster)
    managed_path = naming.private_key_path(cluster)
    with aws_errors(f"describe key pair {name}"):
        found = ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [name]}],
                                       IncludePublicKey=True)["KeyPairs"]
    existing = found[0] if found else None
    if user_key and Path(user_key).expanduser() != managed_path:
        return name, _import_user_key(ec2, config, name, existing, user_key)
    if existing is not None:
        if managed_path.exists() and (not existing.get("PublicKey") or _same_key(
                existing["PublicKey"], public_key_of(managed_path))):
            return name, str(managed_path)
        raise ProviderError(
            f"the key pair {name} exists in {config.provider['region']} but its private key "
            f"is not at {managed_path} (it was created elsewhere); copy that file from the "
            "machine that created the cluster, or remove the cluster's resources with "
            "`corral down --purge`", cause="KeyPairPrivateKeyMissing")
    with aws_errors(f"create key pair {name}"):
        created = ec2.create_key_pair(
            KeyName=name, KeyType="ed25519", KeyFormat="pem",
            TagSpecifications=[naming.tag_specification("key-pair", cluster)])
    paths.write_private(managed_path, created["KeyMaterial"])
    return name, str(managed_path)


def _import_user_key(ec2, config, name: str, existing: dict | None, user_key: str) -> str:
    public = public_key_of(user_key)
    if existing is not None:
        if _same_key(existing.get("PublicKey"), public):
            return user_key
        if not naming.has_cluster_tag(existing, config.cluster_name):
            raise ProviderError(
                f"a key pair named {name} exists but was not made by corral for this cluster; "
                "set provider.key_name to use it, or remove it", cause="KeyPairNameTaken")
        with aws_errors(f"replace key pair {name}"):
            ec2.delete_key_pair(KeyName=name)
    with aws_errors(f"import key pair {name}"):
        ec2.import_key_pair(KeyName=name, PublicKeyMaterial=public.encode(),
                            TagSpecifications=[naming.tag_specification("key-pair",
                                                                        config.cluster_name)])
    return user_key


def delete_key_pair(ec2, config) -> list[str]:
    """Remove the cluster's key pair (only one corral made) and its local private key."""
    if config.provider.get("key_name"):
        return []
    name = naming.key_pair_name(config.cluster_name)
    removed = []
    with aws_errors(f"delete key pair {name}"):
        found = ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [name]}])
        for pair in found["KeyPairs"]:
            if naming.has_cluster_tag(pair, config.cluster_name):
                ec2.delete_key_pair(KeyName=name)
                removed.append(f"key pair {name}")
    local = paths.cluster_dir(config.cluster_name, create=False) / naming.PRIVATE_KEY_FILE
    if local.exists():
        local.unlink()
        removed.append(f"private key {local}")
    return removed
