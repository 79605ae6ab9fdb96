"""Local stand-ins: real Kubernetes control planes, an Azure emulator, a Prefect server."""
