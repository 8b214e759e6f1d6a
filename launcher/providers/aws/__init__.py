"""The AWS (EC2) node provider. `AWSProvider` is what `provider: {type: aws}` selects."""
from launcher.providers.aws.node_provider import AWSProvider

__all__ = ["AWSProvider"]
