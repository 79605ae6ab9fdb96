"""Prefect tasks, one module per external system: thin, idempotent, retried on transient errors only."""
