#!/usr/bin/env python3
"""Checks the shipped deployment files without a Docker engine or a systemd host.

* docker-compose.yml: follows the Compose Specification (no `version:`), validates with
  `docker-compose config`, refuses to render without WEAPP_APP_ID, and has the services,
  ports, health checks, start-up order, restart policies and secrets the README promises.
* Dockerfile: both service targets, non-root runtime, health checks.
* deploy/systemd: `systemd-analyze verify` finds nothing to say; hardening is present.
* deploy/prometheus and deploy/grafana: `promtool check config` accepts the scrape config (its
  rule file path pointed at the shipped rules), and every query of the Grafana dashboard is
  PromQL that `promtool check rules` parses, over metric names the services export.

Run by scripts/test.sh; exits non-zero on any failed check.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
results = []


def check(name, ok, detail=""):
    results.append(ok)
    print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail and not ok else ""))


def compose_config(env):
    return subprocess.run(
        ["docker-compose", "-f", os.path.join(ROOT, "docker-compose.yml"), "config"],
        capture_output=True, text=True, env=env, cwd=ROOT,
    )


def check_compose():
    with open(os.path.join(ROOT, "docker-compose.yml")) as f:
        source = yaml.safe_load(f)
    check("compose: no obsolete top-level `version:`", "version" not in source)

    env = dict(os.environ, WEAPP_APP_ID="wx0000000000000000")
    rendered = compose_config(env)
    check("compose: `docker-compose config` validates", rendered.returncode == 0, rendered.stderr)
    if rendered.returncode != 0:
        return
    env.pop("WEAPP_APP_ID")
    missing = compose_config(env)
    check("compose: refuses to start without WEAPP_APP_ID", missing.returncode != 0 and "WEAPP_APP_ID" in missing.stderr)

    config = yaml.safe_load(rendered.stdout)
    services = config["services"]
    check("compose: services", set(services) == {"mongo", "session-svc", "gateway-svc", "nginx", "tls-init", "prometheus", "cloudrun-example"}, sorted(services))

    for name in ["mongo", "session-svc", "gateway-svc", "nginx", "prometheus", "cloudrun-example"]:
        svc = services[name]
        test = svc.get("healthcheck", {}).get("test")
        check(f"compose: {name} has a health check", bool(test), svc.get("healthcheck"))
        check(f"compose: {name} restarts", svc.get("restart") == "unless-stopped", svc.get("restart"))

    published = {name: svc.get("ports", []) for name, svc in services.items() if svc.get("ports")}
    check("compose: only nginx publishes ports", set(published) == {"nginx"}, published)
    targets = sorted(str(p.get("target") if isinstance(p, dict) else str(p).split(":")[-1]) for p in published.get("nginx", []))
    check("compose: nginx publishes 80 and 443", targets == ["443", "80"], targets)
    gateway = services["gateway-svc"]
    check("compose: gateway-svc scales (no fixed port, no container_name)",
          "ports" not in gateway and "container_name" not in gateway)

    session = services["session-svc"]
    check("compose: session-svc scales (no fixed port, no container_name)",
          "ports" not in session and "container_name" not in session)
    check("compose: gateways find every session-svc replica by the service's DNS name",
          gateway["environment"].get("WEAPP_SESSION_SVC_URL") == "http://session-svc:50051",
          gateway["environment"].get("WEAPP_SESSION_SVC_URL"))
    mongo = services["mongo"]
    mongo_entry = " ".join(str(v) for v in (mongo.get("entrypoint") or []))
    with open(os.path.join(ROOT, "deploy", "compose", "mongo-replica-set.sh")) as f:
        replica_script = f.read()
    check("compose: MongoDB runs as a replica set (change streams), initiated by its health check",
          "mongo-replica-set.sh" in mongo_entry and "--replSet rs0" in replica_script
          and "rs.initiate" in replica_script and "--keyFile" in replica_script
          and "mongo-replica-set.sh" in " ".join(str(v) for v in mongo["healthcheck"]["test"]),
          (mongo_entry, mongo.get("healthcheck")))
    uri = str(services["session-svc"]["environment"].get("WEAPP_MONGODB_URI", ""))
    check("compose: session-svc's URI names the replica set", "replicaSet=rs0" in uri, uri)

    def depends(name, on, condition):
        got = services[name].get("depends_on", {}).get(on, {}).get("condition")
        check(f"compose: {name} waits for {on} ({condition})", got == condition, got)

    depends("session-svc", "mongo", "service_healthy")
    depends("gateway-svc", "session-svc", "service_healthy")
    depends("nginx", "gateway-svc", "service_healthy")
    depends("nginx", "tls-init", "service_completed_successfully")
    prometheus_mounts = " ".join(str(v) for v in services["prometheus"].get("volumes", []))
    check("compose: prometheus uses the shipped scrape config and rules",
          "deploy/prometheus/prometheus.yml" in prometheus_mounts and "deploy/prometheus/rules.yml" in prometheus_mounts,
          prometheus_mounts)
    metrics = {name: services[name]["environment"].get("WEAPP_METRICS_LISTEN") for name in ["session-svc", "gateway-svc"]}
    check("compose: both services serve /metrics on the compose network",
          metrics == {"session-svc": "0.0.0.0:9465", "gateway-svc": "0.0.0.0:9464"}, metrics)

    nginx_mounts = " ".join(str(v) for v in services["nginx"].get("volumes", []))
    check("compose: nginx uses the shipped site config", "deploy/nginx/weapp.conf" in nginx_mounts, nginx_mounts)
    check("compose: mongo data on a named volume", "mongo-data" in config.get("volumes", {}))
    env_session = services["session-svc"]["environment"]
    inline_credentials = [v for v in env_session.values() if re.search(r"mongodb(\+srv)?://[^/@]*:[^/@]*@", str(v))]
    file_vars = {k: v for k, v in env_session.items() if k.endswith("_FILE")}
    check("compose: secrets come from files, not the environment",
          "WEAPP_APP_SECRET" not in env_session and not inline_credentials and len(file_vars) >= 2
          and all(str(v).startswith("/run/secrets/") for v in file_vars.values()), (inline_credentials, file_vars))
    with open(os.path.join(ROOT, ".gitignore")) as f:
        check("compose: ./secrets is git-ignored", "/secrets" in f.read().split())

    # session-svc listens on the compose network: it must require API keys, and the gateway
    # must present one that the keys file grants the gateway's scopes.
    env_gateway = services["gateway-svc"]["environment"]
    check("compose: session-svc requires API keys",
          env_session.get("WEAPP_API_KEYS_FILE") == "/run/secrets/api_keys" and "WEAPP_GRPC_INSECURE" not in env_session,
          env_session.get("WEAPP_API_KEYS_FILE"))
    key_file = env_gateway.get("WEAPP_SESSION_SVC_KEY_FILE", "")
    check("compose: the gateway presents its API key from a secret", key_file.startswith("/run/secrets/"), key_file)
    import tomllib
    with open(os.path.join(ROOT, "deploy", "compose", "api-keys.toml"), "rb") as f:
        keys = {k["name"]: k for k in tomllib.load(f)["key"]}
    check_cloudrun(config, services)
    gateway_key = keys.get("gateway", {})
    check("compose: the keys file gives the gateway's key validate, login and follow",
          os.path.basename(key_file) == gateway_key.get("file")
          and {"validate", "login", "follow"} <= set(gateway_key.get("scopes", [])), gateway_key)


def check_cloudrun(config, services):
    """The Cloud Run example: api.weixin.qq.com is session-svc's open-API proxy on an internal
    network whose addresses the proxy trusts, session-svc reaches WeChat by another name, and
    the gateway routes /cloudrun/ to the container with Cloud Run's headers and its socket."""
    import ipaddress
    import tomllib
    session, example = services["session-svc"], services["cloudrun-example"]
    env = session["environment"]
    network = config.get("networks", {}).get("cloudrun", {})
    subnets = [c.get("subnet") for c in network.get("ipam", {}).get("config", [])]
    check("compose: the cloudrun network is internal, with a fixed subnet",
          network.get("internal") is True and len(subnets) == 1, network)
    aliases = (session.get("networks", {}).get("cloudrun") or {}).get("aliases", [])
    check("compose: on it, api.weixin.qq.com is session-svc", "api.weixin.qq.com" in aliases, aliases)
    check("compose: session-svc's open-API proxy answers http://api.weixin.qq.com (port 80)",
          env.get("WEAPP_OPENAPI_LISTEN") == "0.0.0.0:80"
          and str(session.get("sysctls", {}).get("net.ipv4.ip_unprivileged_port_start")) == "0",
          (env.get("WEAPP_OPENAPI_LISTEN"), session.get("sysctls")))
    trusted = [ipaddress.ip_network(n) for n in str(env.get("WEAPP_OPENAPI_TRUSTED_NETWORKS", "")).split(",") if n]
    check("compose: the proxy trusts exactly the cloudrun network",
          bool(subnets) and trusted == [ipaddress.ip_network(subnets[0])], (trusted, subnets))
    paths = str(env.get("WEAPP_OPENAPI_TRUSTED_PATHS", "")).split(",")
    check("compose: the trusted allow-list has msg_sec_check and never a token endpoint",
          "/wxa/msg_sec_check" in paths and not any("token" in p for p in paths), paths)
    check("compose: session-svc does not call WeChat by the name it answers itself",
          "api.weixin.qq.com" not in str(env.get("WEAPP_WECHAT_BASE_URL")), env.get("WEAPP_WECHAT_BASE_URL"))
    check("compose: the example is on the cloudrun network and publishes nothing",
          "cloudrun" in (example.get("networks") or {}) and "ports" not in example, example.get("networks"))
    with open(os.path.join(ROOT, "deploy", "compose", "routes.toml"), "rb") as f:
        routes = tomllib.load(f)["route"]
    route = next((r for r in routes if r["prefix"] == "/cloudrun/"), {})
    mounts = " ".join(str(v) for v in services["gateway-svc"].get("volumes", []))
    check("compose: the gateway routes /cloudrun/ to the example with Cloud Run's headers and its socket",
          route.get("upstream") == "http://cloudrun-example:80" and route.get("identity_headers") == "cloudrun"
          and route.get("websocket") is True and route.get("session") == "required"
          and "deploy/compose/routes.toml" in mounts
          and services["gateway-svc"]["environment"].get("WEAPP_ROUTES_FILE") == "/etc/weapp/routes.toml",
          (route, mounts))
    with open(os.path.join(ROOT, "examples", "cloudrun-container", "Dockerfile")) as f:
        dockerfile = f.read()
    check("compose: the example's image runs server.js as a non-root user",
          "USER node" in dockerfile and 'CMD ["node", "server.js"]' in dockerfile)


def check_dockerfile():
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = f.read()
    for target in ["session-svc", "gateway-svc"]:
        check(f"Dockerfile: target {target}", re.search(rf"^FROM \S+ AS {target}$", text, re.M) is not None)
        check(f"Dockerfile: {target} health check", f'CMD ["/usr/local/bin/{target}", "healthcheck"]' in text)
    check("Dockerfile: multi-stage with a build stage", re.search(r"^FROM rust:\S+ AS build$", text, re.M) is not None)
    check("Dockerfile: runtime runs as non-root", "USER nonroot" in text and "distroless" in text)
    check("Dockerfile: dependency build cache", "--mount=type=cache" in text)
    with open(os.path.join(ROOT, "bench", "run.sh")) as f:
        bench = f.read()
    check("Dockerfile: builds the services as bench/run.sh measures them (scripts/build-release.sh)",
          "scripts/build-release.sh /out" in text and "scripts/build-release.sh" in bench
          and "rustup component add llvm-tools" in text)


def check_systemd():
    analyze = shutil.which("systemd-analyze")
    check("systemd: systemd-analyze available", analyze is not None)
    if analyze is None:
        return
    units = os.path.join(ROOT, "deploy", "systemd")
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for unit, instance in [("weapp-session-svc.service", "weapp-session-svc.service"),
                               ("weapp-gateway-svc@.service", "weapp-gateway-svc@8765.service")]:
            with open(os.path.join(units, unit)) as f:
                text = f.read()
            key_setting = ("WEAPP_API_KEYS_FILE=%d/" if unit.startswith("weapp-session")
                           else "WEAPP_SESSION_SVC_KEY_FILE=%d/")
            for flag in ["NoNewPrivileges=yes", "ProtectSystem=strict", "DynamicUser=yes", "Restart=on-failure",
                         "EnvironmentFile=", "CapabilityBoundingSet=\n", key_setting]:
                check(f"systemd: {unit} has {flag.strip()}", flag in text)
            if unit.startswith("weapp-gateway"):
                limit = re.search(r"^LimitNOFILE=(\d+)$", text, re.M)
                check("systemd: the gateway may hold 100,000 sockets and more (LimitNOFILE ≥ 200,000)",
                      limit is not None and int(limit.group(1)) >= 200_000, limit and limit.group(0))
            # verify needs an executable ExecStart: point it at a stand-in for the binary.
            text = re.sub(r"^ExecStart=/usr/local/bin/\S+", "ExecStart=/bin/true", text, flags=re.M)
            path = os.path.join(tmp, instance)
            with open(path, "w") as f:
                f.write(text)
            paths.append(path)
        verify = subprocess.run([analyze, "verify", *paths], capture_output=True, text=True)
        said = (verify.stdout + verify.stderr).strip()
        check("systemd: `systemd-analyze verify` is silent", verify.returncode == 0 and not said, said)


def check_scale_settings():
    """What a host needs for 100,000+ sockets (docs/SCALING.md): the sysctls parse as
    `key = value` lines of known keys, and nginx's main-context example raises both limits above
    what two descriptors per socket take."""
    with open(os.path.join(ROOT, "deploy", "sysctl", "90-weapp.conf")) as f:
        settings = dict(
            (k.strip(), v.strip()) for k, v in
            (line.split("=", 1) for line in f if line.strip() and not line.startswith("#"))
        )
    wanted = {"fs.file-max", "fs.nr_open", "net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog",
              "net.ipv4.ip_local_port_range"}
    check("scale: the sysctls cover descriptors, accept queues and local ports",
          wanted <= set(settings) and int(settings["fs.nr_open"]) >= 1_000_000, settings)
    with open(os.path.join(ROOT, "deploy", "nginx", "nginx-main.conf.example")) as f:
        text = f.read()
    rlimit = re.search(r"worker_rlimit_nofile (\d+);", text)
    connections = re.search(r"worker_connections (\d+);", text)
    check("scale: nginx's example raises worker_rlimit_nofile and worker_connections past 100,000",
          rlimit and connections and int(rlimit.group(1)) >= int(connections.group(1)) >= 100_000,
          (rlimit and rlimit.group(0), connections and connections.group(0)))


def check_observability():
    import json
    promtool = shutil.which("promtool")
    check("prometheus: promtool available", promtool is not None)
    if promtool is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(ROOT, "deploy", "prometheus", "prometheus.yml")) as f:
            config = f.read().replace("/etc/prometheus/weapp-rules.yml",
                                      os.path.join(ROOT, "deploy", "prometheus", "rules.yml"))
        config_file = os.path.join(tmp, "prometheus.yml")
        with open(config_file, "w") as f:
            f.write(config)
        checked = subprocess.run([promtool, "check", "config", config_file], capture_output=True, text=True)
        check("prometheus: promtool accepts the shipped scrape config and rules", checked.returncode == 0,
              checked.stdout + checked.stderr)

        with open(os.path.join(ROOT, "deploy", "grafana", "weapp-dashboard.json")) as f:
            dashboard = json.load(f)
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        check("grafana: the dashboard has panels with queries", len(exprs) >= 10, len(exprs))
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"weapp:dashboard_query_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
        rules_file = os.path.join(tmp, "dashboard-rules.yml")
        with open(rules_file, "w") as f:
            yaml.safe_dump(rules, f)
        parsed = subprocess.run([promtool, "check", "rules", rules_file], capture_output=True, text=True)
        check("grafana: every dashboard query is valid PromQL", parsed.returncode == 0, parsed.stdout + parsed.stderr)
        sources = ""
        for path in ["gateway-svc/src/metrics.rs", "session-svc/src/metrics.rs"]:
            with open(os.path.join(ROOT, path)) as f:
                sources += f.read()
        names = set(re.findall(r"\b(weapp_[a-z_]+?)(?:_bucket)?\b", " ".join(exprs)))
        unknown = sorted(n for n in names if n not in sources)
        check("grafana: the dashboard asks only for series the services export", not unknown, unknown)


check_compose()
check_dockerfile()
check_systemd()
check_scale_settings()
check_observability()
passed, failed = results.count(True), results.count(False)
print(f"deploy: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
