"""The gcp provider: Compute Engine nodes through google-api-python-client."""
