#!/usr/bin/env python3
"""/me on this build against a baseline build (another commit), in one run on one machine.

Started by bench/compare.sh, which builds both. Both stacks run side by side (the WeChat
sandbox and the load generator of this build serve both); wrk loads one at a time, the two
alternating for several rounds, so a drifting machine shifts both alike. Prints the medians and
the ratios this/baseline: what a refactor that must keep `/me` "within noise" is held to.
"""
import argparse
import secrets
import statistics
import tempfile
from pathlib import Path

import run as bench


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", type=Path, required=True, help="this build's binaries")
    parser.add_argument("--baseline-bin-dir", type=Path, required=True, help="the baseline's binaries")
    parser.add_argument("--baseline-name", default="baseline")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8, help="seconds of each wrk run")
    args = parser.parse_args()

    class Cfg:
        pass

    cfg = Cfg()
    cfg.bin, cfg.wrk, cfg.wrk_threads, cfg.connections = args.bin_dir, "wrk", 2, 64
    cfg.duration, cfg.ws_connections = args.duration, 100
    cfg.app_id, cfg.app_secret = "wx" + secrets.token_hex(8), secrets.token_hex(16)
    cfg.work = Path(tempfile.mkdtemp(prefix="weapp-compare-"))
    svc = bench.Services(cfg.work)
    results = {"baseline": [], "this": []}
    try:
        cfg.sandbox = bench.start_sandbox(cfg, svc)
        stacks = {}
        for name, bin_dir in (("baseline", args.baseline_bin_dir), ("this", args.bin_dir)):
            cfg.bin = bin_dir
            stacks[name] = bench.start_weapp(cfg, svc, cfg.sandbox)
        cfg.bin = args.bin_dir
        for name, stack in stacks.items():
            _, stack["headers"], _ = bench.sessions_for(cfg, stack, f"compare-{name}", 1)
        for round_ in range(args.rounds):
            order = ("baseline", "this") if round_ % 2 == 0 else ("this", "baseline")
            for name in order:
                results[name].append(bench.wrk(cfg, stacks[name]["base"] + "/me", f"/me, {name}",
                                               stacks[name]["headers"]))
                svc.check_alive()
    finally:
        svc.stop_all()

    def median(name, key):
        return statistics.median(r[key] for r in results[name])

    print(f"\n/me with a valid session, {cfg.connections} connections, {args.rounds} × {args.duration} s each, alternating")
    print(f"| | req/s (median) | p99 (median) | runs (req/s) |")
    print(f"| --- | --- | --- | --- |")
    for name, label in (("baseline", args.baseline_name), ("this", "this build")):
        runs = ", ".join(f"{r['rps']:,.0f}" for r in results[name])
        print(f"| {label} | {median(name, 'rps'):,.0f} | {median(name, 'p99_ms'):.2f} ms | {runs} |")
    print(f"\nthis/baseline: req/s {median('this', 'rps') / median('baseline', 'rps'):.3f}, "
          f"p99 {median('this', 'p99_ms') / median('baseline', 'p99_ms'):.2f}")
    for name in results:
        failed = sum(r["failed"] + r["socket_errors"] for r in results[name])
        if failed:
            raise SystemExit(f"{name}: {failed} failed requests")


if __name__ == "__main__":
    main()
