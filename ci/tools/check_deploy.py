#!/usr/bin/env python3
"""Checks deploy/: every Kubernetes object against the Kubernetes schemas
(offline, strict: unknown fields are errors) for the oldest supported and the
newest Kubernetes, the kustomize build output when kubectl is at hand, and the
facts that tie the manifests to the code and the image: probe ports and
service names, the drain budget, the security settings, selectors.

Run with the tools venv's python (ci/tools/setup.sh); .ci/run does.
Exit status 1 with one line per problem.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BASE = DEPLOY / "kubernetes"
# Oldest supported (gRPC probes and the preStop sleep action) and newest.
VERSIONS = ("1.30.0", "1.37.0")
# API groups that have no schema among Kubernetes' own: custom resources
# (Istio) and kustomize's own files. Validated by their own tools, not here.
FOREIGN_GROUPS = ("kustomize.config.k8s.io", "istio.io", "gateway.networking.k8s.io", "monitoring.coreos.com")

problems: list[str] = []


def problem(text: str) -> None:
    problems.append(text)


def validate(doc: dict, where: str) -> bool:
    ok = True
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.absolute_path)
            problem(f"{where}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')} (Kubernetes {version}): {path}: {e.message}")
            ok = False
        except kubernetes_validate.SchemaNotFoundError as e:
            problem(f"{where}: {e.message}")
            ok = False
    return ok


def is_foreign(doc: dict) -> bool:
    group = str(doc.get("apiVersion", "")).rpartition("/")[0]
    return any(group == g or group.endswith("." + g) for g in FOREIGN_GROUPS)


def check_files() -> dict[tuple[str, str], dict]:
    """Validates every Kubernetes object in deploy/**/*.yaml; returns them by (kind, name)."""
    objects: dict[tuple[str, str], dict] = {}
    for path in sorted(list(DEPLOY.rglob("*.yaml")) + list(DEPLOY.rglob("*.yml"))):
        where = str(path.relative_to(REPO))
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except yaml.YAMLError as e:
            problem(f"{where}: not YAML: {e}")
            continue
        for doc in docs:
            if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                print(f"skip {where}: not a Kubernetes object (e.g. an Envoy or mesh config)")
                continue
            if is_foreign(doc):
                print(f"skip {where}: {doc['apiVersion']} {doc['kind']} has no Kubernetes core schema")
                continue
            if validate(doc, where):
                print(f"ok   {where}: {doc['kind']}/{doc['metadata']['name']} valid for Kubernetes {', '.join(VERSIONS)}")
            if path.parent == BASE:
                objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def check_kustomize_builds() -> None:
    """Renders every kustomization under deploy/ (the base, the example
    overlay) and validates what comes out."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        print("skip kustomize builds: kubectl is not installed (the files were validated one by one)")
        return
    for kustomization in sorted(DEPLOY.rglob("kustomization.yaml")):
        where = kustomization.parent.relative_to(REPO)
        out = subprocess.run([kubectl, "kustomize", str(kustomization.parent)], capture_output=True, text=True)
        if out.returncode != 0:
            problem(f"kubectl kustomize {where} failed: {out.stderr.strip()}")
            continue
        docs = [d for d in yaml.safe_load_all(out.stdout) if d is not None and not is_foreign(d)]
        valid = all([validate(doc, f"kubectl kustomize {where}") for doc in docs])
        kinds = ", ".join(sorted(d["kind"] for d in docs))
        print(f"{'ok  ' if valid else 'FAIL'} kubectl kustomize {where}: {len(docs)} objects ({kinds})")


def seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", duration.strip())
    if not m:
        raise ValueError(f"cannot read the duration {duration!r}")
    return int(m[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m[2]]


def env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


def check_consistency(objects: dict[tuple[str, str], dict]) -> None:
    """What the schemas cannot see: the manifests against the code and each other."""
    deployments = [o for (k, _), o in objects.items() if k == "Deployment"]
    if len(deployments) != 1:
        problem(f"{BASE}: expected one Deployment, found {len(deployments)}")
        return
    dep = deployments[0]
    name = dep["metadata"]["name"]
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    if ports.get("grpc") != 50051 or ports.get("metrics") != 9464:
        problem(f"Deployment ports {ports}: grpc must be 50051 and metrics 9464 (the server's defaults)")

    health_rs = (REPO / "src" / "health.rs").read_text()
    m = re.search(r'pub const LIVENESS_SERVICE: &str = "([^"]*)";', health_rs)
    liveness = m[1] if m else None
    if liveness is None:
        problem("src/health.rs: LIVENESS_SERVICE not found")
    for probe, service in (("startupProbe", ""), ("readinessProbe", ""), ("livenessProbe", liveness)):
        grpc = container.get(probe, {}).get("grpc")
        if grpc is None:
            problem(f"{probe}: must be a gRPC probe (grpc.health.v1)")
            continue
        if grpc.get("port") != 50051:
            problem(f"{probe}: port {grpc.get('port')}, the gRPC port is 50051")
        if grpc.get("service", "") != service:
            problem(f"{probe}: service {grpc.get('service', '')!r}, must be {service!r}")

    config = env_file(BASE / "config.env")
    grace = seconds(config.get("INTROSPECT_SHUTDOWN_GRACE", "20s"))
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    termination = pod.get("terminationGracePeriodSeconds", 30)
    if termination <= pre_stop + grace:
        problem(
            f"terminationGracePeriodSeconds {termination} must exceed the preStop sleep ({pre_stop} s) "
            f"plus INTROSPECT_SHUTDOWN_GRACE ({grace:g} s)"
        )
    if "CLERK_ISSUER" not in config:
        problem("config.env: CLERK_ISSUER is required")
    # Every variable is one the binary reads (a clap `env = "..."` in src/cli, or
    # the environment variable of a row of the settings table in
    # src/config/settings.rs: `meta(key, flag, ENV, ...)`), so a typo cannot pass
    # silently as an unknown variable.
    known = {"RUST_LOG"}
    for f in (REPO / "src").rglob("*.rs"):
        text = f.read_text()
        known |= set(re.findall(r'env = "([A-Z0-9_]+)"', text))
        known |= set(re.findall(r'meta\(\s*"[^"]*",\s*"[^"]*",\s*"([A-Z0-9_]+)"', text))
    for key in config:
        if key not in known:
            problem(f"config.env: {key} is not a variable clerk-introspect reads")

    sc, csc = pod.get("securityContext", {}), container.get("securityContext", {})
    checks = {
        "pod runAsNonRoot": sc.get("runAsNonRoot") is True,
        "pod seccompProfile RuntimeDefault": sc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
        "container allowPrivilegeEscalation false": csc.get("allowPrivilegeEscalation") is False,
        "container readOnlyRootFilesystem": csc.get("readOnlyRootFilesystem") is True,
        "container capabilities drop ALL": "ALL" in csc.get("capabilities", {}).get("drop", []),
        "resources requests and limits": all(
            k in container.get("resources", {}).get(w, {}) for w in ("requests", "limits") for k in ("cpu", "memory")
        ),
    }
    for what, ok in checks.items():
        if not ok:
            problem(f"Deployment: {what} is required")

    dockerfile = (DEPLOY / "Dockerfile").read_text()
    user = re.findall(r"^USER\s+(\d+)", dockerfile, re.M)
    if not user or int(user[-1]) != sc.get("runAsUser"):
        problem(f"deploy/Dockerfile USER {user} and the pod's runAsUser {sc.get('runAsUser')} must be the same uid")
    exposed = {int(p) for line in re.findall(r"^EXPOSE\s+(.+)$", dockerfile, re.M) for p in line.split()}
    if exposed != {50051, 9464}:
        problem(f"deploy/Dockerfile EXPOSE {sorted(exposed)}: must be 50051 and 9464")

    def selects(selector: dict, where: str) -> None:
        if not all(labels.get(k) == v for k, v in selector.items()):
            problem(f"{where}: selector {selector} does not select the pods {labels}")

    for (kind, obj_name), obj in objects.items():
        spec = obj.get("spec", {})
        if kind == "Service":
            selects(spec.get("selector", {}), f"Service/{obj_name}")
            for port in spec.get("ports", []):
                if port.get("targetPort") not in ports and port.get("targetPort") not in ports.values():
                    problem(f"Service/{obj_name}: targetPort {port.get('targetPort')} is not a container port")
                if port.get("name") == "grpc" and port.get("appProtocol") != "grpc":
                    problem(f"Service/{obj_name}: the grpc port needs appProtocol: grpc")
        elif kind == "PodDisruptionBudget":
            selects(spec.get("selector", {}).get("matchLabels", {}), f"PodDisruptionBudget/{obj_name}")
        elif kind == "HorizontalPodAutoscaler":
            if spec["scaleTargetRef"].get("name") != name or spec["scaleTargetRef"].get("kind") != "Deployment":
                problem(f"HorizontalPodAutoscaler/{obj_name}: scaleTargetRef must name Deployment/{name}")
            if spec.get("minReplicas", 1) > dep["spec"].get("replicas", 1):
                problem(f"HorizontalPodAutoscaler/{obj_name}: minReplicas above the Deployment's replicas")
    for constraint in pod.get("topologySpreadConstraints", []):
        selects(constraint.get("labelSelector", {}).get("matchLabels", {}), "topologySpreadConstraints")
    if pod.get("serviceAccountName") and ("ServiceAccount", pod["serviceAccountName"]) not in objects:
        problem(f"Deployment: ServiceAccount {pod['serviceAccountName']} is not in the base")


def main() -> int:
    objects = check_files()
    check_kustomize_builds()
    check_consistency(objects)
    for p in problems:
        print(f"FAIL {p}")
    if problems:
        print(f"deploy check: {len(problems)} problem(s)")
        return 1
    print("deploy check: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
