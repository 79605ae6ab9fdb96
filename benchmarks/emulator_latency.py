"""Latency of a real SecretClient set_secret + get_secret round trip against the Azure emulator.

Runs two in-process emulators side by side: the normal one (TCP_NODELAY, one write per
response) and a deliberately naive one (stdlib defaults: Nagle on, headers and body written
separately), and prints median/p95 per round trip for each.

Usage: ``python benchmarks/emulator_latency.py [-n 200]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from azure.identity import ClientSecretCredential
from azure.keyvault.secrets import SecretClient

from sandbox.azure import AzureEmulator


def measure(emu: AzureEmulator, rounds: int, warmup: int = 20) -> list[float]:
    """Return per-round-trip milliseconds of set_secret + get_secret."""
    ca = str(emu.ca_bundle)
    credential = ClientSecretCredential(
        emu.tenant_id,
        "bench",
        "secret",
        authority=emu.url,
        disable_instance_discovery=True,
        connection_verify=ca,
    )
    client = SecretClient(emu.url, credential, connection_verify=ca)
    samples = []
    try:
        for i in range(warmup + rounds):
            started = time.perf_counter()
            client.set_secret("bench", f"value-{i}")
            if client.get_secret("bench").value != f"value-{i}":
                raise RuntimeError("read back a different value")
            if i >= warmup:
                samples.append((time.perf_counter() - started) * 1000)
    finally:
        client.close()
        credential.close()
    return samples


def summary(samples: list[float]) -> tuple[float, float]:
    """Median and 95th percentile."""
    return statistics.median(samples), statistics.quantiles(samples, n=20)[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=200)
    rounds = parser.parse_args().n
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, naive in (("emulator (TCP_NODELAY)", False), ("naive (Nagle on)", True)):
            clients = {"bench": "secret"}
            with AzureEmulator(Path(tmp) / label.split()[0], naive=naive, clients=clients) as emu:
                results[label] = summary(measure(emu, rounds))
    print(f"SecretClient set_secret + get_secret, N={rounds} round trips (after warm-up)")
    print(f"{'server':<24}{'median ms':>11}{'p95 ms':>10}")
    for label, (median, p95) in results.items():
        print(f"{label:<24}{median:>11.2f}{p95:>10.2f}")
    fast, slow = results["emulator (TCP_NODELAY)"][0], results["naive (Nagle on)"][0]
    print(f"naive / emulator median ratio: {slow / fast:.1f}x")


if __name__ == "__main__":
    main()
