"""End-to-end scenarios: a real twistd tlsproxy subprocess, a real backend, real clients."""
