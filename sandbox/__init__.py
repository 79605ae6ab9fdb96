"""Local stand-ins: real Kubernetes control planes, an Azure emulator, a Prefect server."""

from pathlib import Path

ISTIOCTL_STANDIN = Path(__file__).resolve().parent / "bin" / "istioctl"
"""The labelled istioctl stand-in the sandbox installs with (``MESHFLOW_ISTIOCTL``)."""
