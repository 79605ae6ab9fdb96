"""Prefect flows: composition only, they read like the runbook."""
