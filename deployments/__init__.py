"""Per-environment parameters and deployment code."""
