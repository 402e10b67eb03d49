#!/usr/bin/env python3
"""Offline checks of deploy/ that need no container engine (run by tests/e2e_deploy.rs).

- compose/compose.yaml: parses; the services of the federation are there; every
  depends_on names a service with a valid condition; named volumes are declared; bind
  mounts and the build context exist; each node's config is one init.sh creates.
- Containerfile: multi-stage, a non-root USER, a HEALTHCHECK, the two ports.
- kubernetes/*.yaml: writes the node.toml of each ConfigMap to OUT_DIR/<name>.node.toml
  so the test can load it with the node's own config parser.

Usage: check.py DEPLOY_DIR OUT_DIR
"""

import pathlib
import re
import sys

import yaml

errors = []


def check(ok, message):
    if not ok:
        errors.append(message)


def compose(deploy):
    path = deploy / "compose" / "compose.yaml"
    doc = yaml.safe_load(path.read_text())
    services = doc.get("services", {})
    want = {"postgres", "init", "acme", "globex", "fixit", "federate"}
    check(set(services) == want, f"compose services {sorted(services)} != {sorted(want)}")
    declared = set((doc.get("volumes") or {}).keys())
    init_sh = (deploy / "compose" / "init.sh").read_text()
    orgs = re.search(r"for org in ([a-z ]+); do", init_sh)
    init_orgs = set(orgs.group(1).split()) if orgs else set()
    for name, svc in services.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            check(dep in services, f"{name} depends on unknown service {dep}")
            cond = spec.get("condition")
            check(
                cond in {"service_started", "service_healthy", "service_completed_successfully"},
                f"{name}: bad depends_on condition {cond}",
            )
            if cond == "service_healthy":
                has_check = "healthcheck" in services.get(dep, {}) or dep in {"acme", "globex", "fixit"}
                check(has_check, f"{name} waits for {dep} to be healthy, which has no health check")
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            if source.startswith("."):
                check((path.parent / source).exists(), f"{name}: bind mount {source} missing")
            else:
                check(source in declared, f"{name}: volume {source} not declared")
        build = svc.get("build")
        if build:
            ctx = (path.parent / build["context"]).resolve()
            check((ctx / build["dockerfile"]).exists(), f"{name}: {build['dockerfile']} missing")
        config = (svc.get("environment") or {}).get("VERBUND_CONFIG")
        if name in {"acme", "globex", "fixit"}:
            check(config == f"/var/lib/verbund/{name}/node.toml", f"{name}: VERBUND_CONFIG {config}")
            check(name in init_orgs, f"init.sh does not create {name}")
            check(svc.get("command") == ["run"], f"{name}: command {svc.get('command')}")


def containerfile(deploy):
    text = (deploy / "Containerfile").read_text()
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
    froms = [l for l in lines if l.upper().startswith("FROM ")]
    check(len(froms) >= 2, "Containerfile is not multi-stage")
    users = [l.split()[1] for l in lines if l.upper().startswith("USER ")]
    check(bool(users) and users[-1].split(":")[0] not in {"0", "root"}, "the image runs as root")
    check(any(l.upper().startswith("HEALTHCHECK ") for l in lines), "no HEALTHCHECK")
    expose = " ".join(l for l in lines if l.upper().startswith("EXPOSE "))
    check("7443" in expose and "9464" in expose, "EXPOSE lacks 7443 or 9464")


def kubernetes(deploy, out):
    found = 0
    for path in sorted((deploy / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ConfigMap" and "node.toml" in doc.get("data", {}):
                name = doc["metadata"]["name"]
                (out / f"{name}.node.toml").write_text(doc["data"]["node.toml"])
                found += 1
    check(found > 0, "no ConfigMap with a node.toml")


def main():
    deploy, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    compose(deploy)
    containerfile(deploy)
    kubernetes(deploy, out)
    for e in errors:
        print(f"deploy check: {e}", file=sys.stderr)
    if errors:
        return 1
    print("deploy checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
