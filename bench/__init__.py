"""Benchmarks: tlsproxy against nginx as TLS-terminating proxies, in the same run (see run.py)."""
