"""Quickstart: map a real function over inputs with ``ClusterExecutor()``.

With no configuration the executor runs each job as a local process (the embedded default),
so this works on a laptop. Point it at a cluster by passing a config, for example::

    ClusterExecutor(ClusterConfig(cluster_type="slurm", cluster_host="login.hpc.example.org",
                                  username="me", key_file="~/.ssh/id_ed25519"))
"""

from __future__ import annotations

import math

from clustrix import ClusterExecutor


def count_primes(limit: int) -> int:
    """Count the primes below ``limit`` (a small, honest CPU-bound job)."""
    sieve = bytearray([1]) * limit
    sieve[:2] = b"\x00\x00"
    for n in range(2, math.isqrt(limit) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytearray(len(range(n * n, limit, n)))
    return sum(sieve)


def main() -> None:
    limits = [10**k for k in range(2, 8)]
    with ClusterExecutor() as executor:
        for limit, primes in zip(limits, executor.map(count_primes, limits), strict=True):
            print(f"primes below {limit:>10,}: {primes:>8,}")
        future = executor.submit(count_primes, 1_000_000)
        primes = future.result()
        print(f"job {future.job_id}: {primes:,} primes below 1,000,000")


if __name__ == "__main__":
    main()
