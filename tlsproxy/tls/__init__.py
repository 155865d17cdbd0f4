"""TLS: policy, certificate store and the local development CA."""
