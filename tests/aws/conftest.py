"""Fixtures of the AWS provider tests: one moto server per test module (its state wiped
when the module ends), a fresh cluster name per test so tests never see each other's
resources, and the Ubuntu image parameter published as AWS does."""
from __future__ import annotations

import uuid

import pytest

from tests.aws.configs import publish_ubuntu_image
from tests.aws.moto_server import moto_server


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    with moto_server(tmp_dir=str(tmp_path_factory.mktemp("aws"))) as server:
        yield server


@pytest.fixture
def cluster_name(moto):
    publish_ubuntu_image()
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def ec2(moto):
    import boto3
    return boto3.client("ec2", region_name=moto.region)


@pytest.fixture
def iam(moto):
    import boto3
    return boto3.client("iam", region_name=moto.region)
