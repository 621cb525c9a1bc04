"""The full-size attacks of issue 16 against one `armorm-serve` with its default limits, and the figures table.

    python scripts/abuse_report.py [--repository build/repository]

Without --repository it exports a tiny random-weight model first (as the tests do). Attacks, each with good
HTTP scoring calls every 50 ms from 127.0.0.1 meanwhile, from a process of their own (attackers connect from
127.0.0.2); the unattacked p99 is measured the same way for 20 s first:
  1. 100 connections sending a 60 MB inference body each at once;
  2. 1,500 slowloris connections (half a request line, a header byte every 5 s), held past the header timeout;
  3. 300 connections declaring a 60 MB body and sending a byte every 5 s.
Memory is the RSS of armorm-serve, tritonserver and the model processes (their sum), sampled every 50 ms.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from armorm.gateway.config import DEFAULT_MAX_BUFFERED_BYTES, ConnectionLimits
from armorm.gateway.stats import SHED
from armorm.testing.abuse import (
    GoodClient,
    PeakRss,
    big_bodies,
    big_body,
    good_latencies,
    p99,
    run,
    slow_bodies,
    slowloris,
    tree_rss,
)
from armorm.testing.prometheus import scrape, total
from armorm.testing.serve_process import ServeProcess

MiB = 1 << 20
GOOD_GAP_S = 0.05
UNATTACKED_S = 20.0


def tiny_repository(directory: Path) -> Path:
    from armorm.testing.random_checkpoint import write_random_checkpoint
    from armorm_export.repository import ExportOptions, export_repository

    checkpoint = write_random_checkpoint(directory / "checkpoint" / "tiny-armorm", seed=1234)
    return export_repository(checkpoint, directory / "repository", ExportOptions(max_tokens=1024))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path)
    parser.add_argument("--bodies", type=int, default=100)
    parser.add_argument("--body-mb", type=int, default=60)
    parser.add_argument("--slowloris", type=int, default=1500)
    parser.add_argument("--slow-bodies", type=int, default=300)
    args = parser.parse_args(argv)
    limits = ConnectionLimits()
    with tempfile.TemporaryDirectory(prefix="abuse-") as scratch:
        repository = args.repository or tiny_repository(Path(scratch))
        with ServeProcess(repository, Path(scratch) / "logs") as server:
            host, port = server.http_url.split(":")
            pids = {server.process.pid, server.triton_pid()}
            good_latencies(server.http_url, 5)
            with GoodClient(server.http_url, GOOD_GAP_S) as quiet:
                time.sleep(UNATTACKED_S)
            unattacked = p99(quiet.latencies)
            rows = []

            def attack(name: str, coroutine_factory, hold_note: str) -> None:
                before = tree_rss(server.process.pid)
                start = time.monotonic()
                with PeakRss(server.process.pid) as peak, GoodClient(server.http_url, GOOD_GAP_S) as good:
                    result = run(coroutine_factory())
                latencies = good.latencies
                rows.append((name, result, (peak.peak - before) / MiB, len(latencies), p99(latencies),
                             time.monotonic() - start, hold_note))
                print(f"  {name}: {result}", file=sys.stderr, flush=True)

            body = big_body(args.body_mb * 1_000_000)
            attack(f"{args.bodies} × {args.body_mb} MB bodies at once",
                   lambda: big_bodies(host, int(port), body, args.bodies, 300), "statuses")
            hold = limits.header_timeout_s + 5
            attack(f"{args.slowloris} slowloris connections, held {hold:.0f} s",
                   lambda: slowloris(host, int(port), args.slowloris, 5.0, hold), "(opened, still held)")
            hold = limits.body_rate_grace_s + 10
            attack(f"{args.slow_bodies} slow 60 MB bodies (1 byte / 5 s), held {hold:.0f} s",
                   lambda: slow_bodies(host, int(port), args.slow_bodies, 60_000_000, 5.0, hold),
                   "(opened, still held)")
            samples = scrape(server.metrics_url)
            restarted = server.process.poll() is not None or server.triton_pid() not in pids
    budget = DEFAULT_MAX_BUFFERED_BYTES / MiB
    print(f"\nDefault limits: budget {budget:.0f} MiB (bound: growth ≤ {budget + 64:.0f} MiB), header timeout "
          f"{limits.header_timeout_s:g} s, body idle {limits.body_idle_timeout_s:g} s, min body rate "
          f"{limits.min_body_rate:g} B/s after {limits.body_rate_grace_s:g} s, per-address cap "
          f"{limits.max_connections_per_address}")
    print(f"Unattacked good-request p99: {unattacked * 1000:.0f} ms (bound under attack: "
          f"{2 * unattacked * 1000:.0f} ms)\n")
    print("| attack | result | RSS growth (MiB) | good answered | good p99 (ms) | took (s) |")
    print("|---|---|---|---|---|---|")
    for name, result, growth, answered, latency, took, note in rows:
        print(f"| {name} | {note}: {dict(result) if hasattr(result, 'items') else result} | {growth:.0f} | "
              f"{answered}, all 200 | {latency * 1000:.0f} | {took:.0f} |")
    shed = {reason: total(samples, SHED, listener="http", reason=reason)
            for reason in ("header_timeout", "connection_cap")}
    print(f"\nConnections shed (http): {shed}; any process restarted: {restarted}")
    return 1 if restarted else 0


if __name__ == "__main__":
    sys.exit(main())
