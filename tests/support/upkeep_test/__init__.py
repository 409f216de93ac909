"""Test support for upkeep's integration tests (Python 3 stdlib only).

Modules:
  certs        test CA and certificates made with the openssl CLI (cached per process)
  patterns     deterministic response bodies shared by every origin
  nginx        a real nginx origin (TLS + h2) on 127.0.0.1, port 0
  fault_origin an in-process asyncio TLS/plain origin that injects faults
  proxy        runs the real upkeep binary with a generated YAML config
  client       raw-socket HTTP/1.1 client helpers
"""
