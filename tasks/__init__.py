"""Prefect tasks, one module per external system.

Thin and idempotent; retried on transient errors only (see :mod:`tasks.retry`).
"""
