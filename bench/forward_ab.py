"""Forwarding, two gateway builds side by side: `GET /api/hello` with a session through gateway
A and gateway B (same session-svc, same `weapp-bench hello` upstream, same routes file), and
nginx proxying that upstream with no auth, wrk interleaved for a few rounds so that the noisy
machine treats all three alike. For refactors of the request path (issue 23's forwarding
target); bench/README.md has the figures it gave.

    python3 bench/forward_ab.py --bin-dir target/release --other /path/to/other/gateway-svc [--rounds 3]
    python3 bench/forward_ab.py --bin-dir target/release --b-env WEAPP_HTTP_FAST_PATH=false

--bin-dir holds this build's session-svc, gateway-svc (A), wechat-sandbox and weapp-bench;
--other is gateway B (e.g. built from another commit into another target directory; default:
this build's), --b-env a setting of B's (repeatable). Besides the requests per second, each
run's CPU time per request of the proxy (gateway A, B or nginx's workers) and of the upstream,
user + system, from /proc/PID/stat: where a difference comes from.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as B  # noqa: E402  (bench/run.py: the same helpers the report uses)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", type=Path, required=True)
    parser.add_argument("--other", type=Path, help="gateway B's binary (default: --bin-dir's)")
    parser.add_argument("--b-env", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of gateway B's")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    class Cfg:
        pass

    cfg = Cfg()
    cfg.smoke, cfg.bin = False, args.bin_dir
    cfg.wrk = os.environ.get("WRK_BIN", "wrk")
    cfg.nginx = os.environ.get("NGINX_BIN", "/usr/sbin/nginx")
    cfg.app_id, cfg.app_secret = "wx" + os.urandom(8).hex(), os.urandom(16).hex()
    cfg.wrk_threads, cfg.connections, cfg.duration = 2, 64, 10
    cfg.logins, cfg.ws_connections, cfg.ws_connections_large, cfg.push_users = 20, 100, 100, 10
    cfg.server_cpus = cfg.client_cpus = None
    cfg.work = Path(tempfile.mkdtemp(prefix="forward-ab-"))
    services, sandbox = B.Services(cfg.work), B.Services(cfg.work)
    try:
        cfg.sandbox = B.start_sandbox(cfg, sandbox)
        hello = B.free_port()
        upstream = services.start("hello", [cfg.bin / "weapp-bench", "hello", "--listen", f"127.0.0.1:{hello}"], port=hello)
        routes = cfg.work / "routes.toml"
        routes.write_text(f'[[route]]\nprefix = "/api/"\nupstream = "http://127.0.0.1:{hello}"\nsession = "required"\n')
        stack = B.start_weapp(cfg, services, cfg.sandbox, gateway_env={"WEAPP_ROUTES_FILE": str(routes)})
        port = B.free_port()
        b_env = dict(setting.split("=", 1) for setting in args.b_env)
        gateway_b = services.start("gateway-b", [args.other or cfg.bin / "gateway-svc"], port=port, env={
            "WEAPP_GATEWAY_LISTEN": f"127.0.0.1:{port}", "WEAPP_METRICS_LISTEN": "127.0.0.1:0",
            "WEAPP_SESSION_SVC_URL": f"http://127.0.0.1:{stack['session_port']}",
            "WEAPP_SESSION_SVC_KEY_FILE": str(B.api_keys(cfg)[1]), "WEAPP_ROUTES_FILE": str(routes),
            **b_env})
        B.wait_ready(f"http://127.0.0.1:{port}/readyz")
        _, headers, _ = B.sessions_for(cfg, stack, "forward-ab", 1)
        _, proxies = B.start_nginx(cfg, services, {"upstream": hello}, plain=True)
        workers = subprocess.run(["pgrep", "-f", "nginx: worker"], capture_output=True, text=True)
        targets = {"a": (stack["base"], headers, [stack["pids"][0]]),
                   "b": (f"http://127.0.0.1:{port}", headers, [gateway_b.pid]),
                   "nginx": (f"http://127.0.0.1:{proxies['upstream']}", (),
                             [int(p) for p in workers.stdout.split()])}
        rounds = {name: [] for name in targets}
        for _ in range(args.rounds):
            for name, (base, sent, pids) in targets.items():
                before = [cpu(pids), cpu([upstream.pid])]
                result = B.wrk(cfg, base + "/api/hello", f"forwarding, {name}", sent)
                after = [cpu(pids), cpu([upstream.pid])]
                n = result["rps"] * cfg.duration
                per = lambda i: [round(1e6 * (after[i][k] - before[i][k]) / n, 1) for k in (0, 1)]
                rounds[name].append({"rps": result["rps"], "p99_ms": result["p99_ms"],
                                     "proxy_cpu_us_user_sys": per(0), "upstream_cpu_us_user_sys": per(1)})
                print(name, json.dumps(rounds[name][-1]), flush=True)
        print(json.dumps(rounds))
    finally:
        services.stop_all()
        sandbox.stop_all()


def cpu(pids):
    """User and system CPU seconds the processes have used so far (/proc/PID/stat)."""
    user = system = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        user, system = user + int(fields[11]), system + int(fields[12])
    ticks = os.sysconf("SC_CLK_TCK")
    return user / ticks, system / ticks


if __name__ == "__main__":
    main()
