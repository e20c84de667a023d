"""The deployment files under ``deploy/``, checked for real and offline.

Why: these files are run by other people's clusters, init systems and Grafanas, where
a mistake shows up late and far from here. So every Kubernetes manifest is validated
against the Kubernetes API schemas (``kubernetes-validate`` bundles them) and built
with kustomize; the systemd unit goes through ``systemd-analyze verify`` and
``systemd-analyze security``, and dns2dot is run under the unit's memory, system-call
and address-family restrictions; every Grafana query is parsed as PromQL and may name
only the metrics dns2dot exports. A missing tool or package fails the test: nothing is
skipped.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import dns.message
import dns.query
import dns.rcode
import pytest
import yaml
from support import REPO_ROOT
from support.fake_upstream import FakeUpstream
from support.net import LOOPBACK, free_port
from support.pki import Pki
from support.proc import base_env, startup_line

DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
SIDECAR = K8S / "sidecar"
KUSTOMIZATIONS = (K8S, SIDECAR)
UNIT = DEPLOY / "systemd" / "dns2dot.service"
SYSTEMD_CONFIG = DEPLOY / "systemd" / "dns2dot.yml"
DASHBOARD = DEPLOY / "grafana" / "dns2dot-dashboard.json"

#: The oldest Kubernetes the manifests promise to work with (native sidecars are on by
#: default from 1.29); they are also checked against the newest schemas bundled.
OLDEST_KUBERNETES = "1.29"

#: README's option table (YAML keys), plus the settings being added: ``metrics``,
#: ``log_format``, ``log_queries``, ``cache_size`` and ``rules``.
CONFIG_KEYS = frozenset(
    {
        "listen",
        "upstreams",
        "pins",
        "cafile",
        "mode",
        "timeout",
        "idle_timeout",
        "max_tcp_clients",
        "max_inflight_per_client",
        "workers",
        "strategy",
        "upstream_idle_timeout",
        "max_queries_per_connection",
        "max_inflight",
        "allow",
        "ratelimit",
        "verbose",
        "metrics",
        "log_format",
        "log_queries",
        "cache_size",
        "rules",
    }
)
CLOUDFLARE = ["1.1.1.1#cloudflare-dns.com", "1.0.0.1#cloudflare-dns.com"]
#: The cluster.local rule, exactly in the shape the rules key will take.
CLUSTER_RULES = {"forward": [{"zone": "cluster.local", "upstreams": ["plain://10.96.0.10:53"]}]}
#: Where the container image's settings live (and which DNS2DOT_* it sets).
DOCKERFILE = REPO_ROOT / "Dockerfile"
CONFIG_PATH = "/etc/dns2dot/dns2dot.yml"

#: Every metric dns2dot exports, with its labels (Prometheus adds instance and job).
METRICS: dict[str, frozenset[str]] = {
    "dns2dot_queries_total": frozenset({"transport", "qtype", "rcode"}),
    "dns2dot_query_duration_seconds": frozenset({"transport"}),
    "dns2dot_cache_hits_total": frozenset(),
    "dns2dot_cache_misses_total": frozenset(),
    "dns2dot_cache_entries": frozenset(),
    "dns2dot_inflight_queries": frozenset(),
    "dns2dot_tcp_clients": frozenset(),
    "dns2dot_upstream_up": frozenset({"upstream"}),
    "dns2dot_upstream_rtt_seconds": frozenset({"upstream"}),
    "dns2dot_upstream_failures_total": frozenset({"upstream", "kind"}),
    "dns2dot_tls_handshakes_total": frozenset({"upstream", "resumed"}),
    "dns2dot_rule_hits_total": frozenset({"rule"}),
    "dns2dot_dropped_total": frozenset({"reason"}),
    "dns2dot_refused_total": frozenset({"reason"}),
}
HISTOGRAMS = frozenset({"dns2dot_query_duration_seconds"})
TARGET_LABELS = frozenset({"instance", "job"})
#: Grafana's variables, replaced by plausible values before a query is parsed.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$instance": ".*",
}

#: Panel title -> metrics its queries must use (the panels the dashboard promises).
REQUIRED_PANELS: dict[str, set[str]] = {
    "Queries per second by rcode": {"dns2dot_queries_total"},
    "Latency p50 / p95 / p99": {"dns2dot_query_duration_seconds_bucket"},
    "Cache hit ratio": {"dns2dot_cache_hits_total", "dns2dot_cache_misses_total"},
    "Upstream up": {"dns2dot_upstream_up"},
    "Upstream RTT": {"dns2dot_upstream_rtt_seconds"},
    "Upstream failures by kind": {"dns2dot_upstream_failures_total"},
    "TCP clients": {"dns2dot_tcp_clients"},
    "In-flight queries": {"dns2dot_inflight_queries"},
    "Dropped by reason": {"dns2dot_dropped_total"},
    "Refused by reason": {"dns2dot_refused_total"},
    "TLS resumption ratio": {"dns2dot_tls_handshakes_total"},
}


# -- helpers -----------------------------------------------------------------------


def require_module(name: str, requirement: str) -> ModuleType:
    """Import ``name``; a missing package fails the test, naming what to pip install."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        pytest.fail(
            f"Python package {requirement!r} is required: pip install '{requirement}' ({exc})"
        )


def require_tool(name: str, package: str) -> str:
    """Path of the command ``name``; missing, it fails the test, naming its package."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"required tool {name!r} is not installed (Debian package {package!r})")
    return path


def load_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document in ``path`` (each must be a mapping)."""
    with open(path, encoding="utf-8") as handle:
        documents = [doc for doc in yaml.safe_load_all(handle) if doc is not None]
    for doc in documents:
        assert isinstance(doc, dict), f"{path}: a document is not a mapping"
    return documents


def manifest_files(directory: Path) -> list[Path]:
    """The manifests in ``directory`` (not its subfolders): every YAML file but kustomization."""
    return sorted(
        p
        for p in directory.iterdir()
        if p.suffix in (".yaml", ".yml")
        and p.name not in ("kustomization.yaml", "kustomization.yml")
    )


def resources_in(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(file, document) for every Kubernetes resource the kustomization in ``directory`` lists."""
    return [(path, doc) for path in manifest_files(directory) for doc in load_documents(path)]


def all_resources() -> list[tuple[Path, dict[str, Any]]]:
    return [item for directory in KUSTOMIZATIONS for item in resources_in(directory)]


def by_kind(directory: Path, kind: str) -> list[dict[str, Any]]:
    return [doc for _path, doc in resources_in(directory) if doc["kind"] == kind]


def one(directory: Path, kind: str) -> dict[str, Any]:
    found = by_kind(directory, kind)
    assert len(found) == 1, f"{directory}: expected one {kind}, found {len(found)}"
    return found[0]


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    """(name, pod spec) of every pod the manifests make."""
    daemonset = one(K8S, "DaemonSet")
    pod = one(SIDECAR, "Pod")
    return [
        (f"DaemonSet/{daemonset['metadata']['name']}", daemonset["spec"]["template"]["spec"]),
        (f"Pod/{pod['metadata']['name']}", pod["spec"]),
    ]


def containers_of(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def dns2dot_container(spec: dict[str, Any]) -> dict[str, Any]:
    found = [c for c in containers_of(spec) if c["image"].split(":")[0].endswith("dns2dot")]
    assert len(found) == 1, "expected exactly one dns2dot container"
    return found[0]


def dockerfile_env() -> dict[str, str]:
    """The ENV settings of the repository's Dockerfile (the image the manifests run)."""
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0].upper() == "ENV":
            for word in words[1:]:
                key, _, value = word.partition("=")
                env[key] = value
    return env


def flag_value(args: list[str], *flags: str) -> str | None:
    """The last value given to any of ``flags`` in ``args`` (``--flag V`` or ``--flag=V``)."""
    value = None
    for i, arg in enumerate(args):
        if arg in flags and i + 1 < len(args):
            value = args[i + 1]
        for flag in flags:
            if arg.startswith(flag + "="):
                value = arg.split("=", 1)[1]
    return value


def mounted_config(directory: Path, spec: dict[str, Any], container: dict[str, Any]) -> Any:
    """The dns2dot YAML that ``container`` reads: ``--config`` -> volume -> ConfigMap key."""
    args = [*container.get("command", []), *container.get("args", [])]
    path = flag_value(args, "-c", "--config")
    assert path == CONFIG_PATH, f"dns2dot is started with --config {path}, not {CONFIG_PATH}"
    folder, _, key = path.rpartition("/")
    mounts = [m for m in container.get("volumeMounts", []) if m["mountPath"] == folder]
    assert len(mounts) == 1, f"nothing is mounted at {folder}"
    assert "subPath" not in mounts[0], "a subPath mount never sees ConfigMap updates"
    volume = next(v for v in spec["volumes"] if v["name"] == mounts[0]["name"])
    assert "configMap" in volume, f"{folder} is not a ConfigMap volume"
    configmaps = {c["metadata"]["name"]: c for c in by_kind(directory, "ConfigMap")}
    name = volume["configMap"]["name"]
    assert name in configmaps, f"ConfigMap {name} is not among {directory}'s resources"
    assert key in configmaps[name]["data"], f"ConfigMap {name} has no key {key}"
    return yaml.safe_load(configmaps[name]["data"][key])


def effective_listen(container: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Where dns2dot listens: the flag, else DNS2DOT_LISTEN (the pod's, else the image's),
    else the YAML file; the command line wins over the environment, which wins over YAML."""
    args = [*container.get("command", []), *container.get("args", [])]
    flag = flag_value(args, "-l", "--listen")
    if flag is not None:
        return [flag]
    env = dockerfile_env()
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    if "DNS2DOT_LISTEN" in env:
        return [item for item in env["DNS2DOT_LISTEN"].split(",") if item.strip()]
    listen = config.get("listen", ["127.0.0.1:53"])
    return listen if isinstance(listen, list) else [listen]


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def check_config_keys(config: Any, where: str) -> None:
    assert isinstance(config, dict), f"{where}: the dns2dot settings are not a mapping"
    unknown = set(config) - CONFIG_KEYS
    assert not unknown, f"{where}: settings dns2dot does not know: {sorted(unknown)}"
    upstreams = config.get("upstreams", [])
    for entry in upstreams if isinstance(upstreams, list) else [upstreams]:
        if isinstance(entry, str):
            assert re.fullmatch(r"[0-9a-fA-F.:\[\]]+(:\d+)?(#[A-Za-z0-9.-]+)?", entry), entry
        else:
            assert isinstance(entry, dict) and set(entry) <= {"address", "name", "pins"}, entry


def unit_settings(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> every value given, in order (unit files repeat keys)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not a setting: {raw!r}"
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def runnable_unit(tmp_path: Path) -> Path:
    """A copy of the unit whose ExecStart names a program that exists on this machine.

    ``systemd-analyze verify`` rejects a unit whose binary is missing, and dns2dot is
    not installed at /usr/local/bin here; everything else is left as it is.
    """
    program = shutil.which("dns2dot") or sys.executable
    text = UNIT.read_text(encoding="utf-8")
    assert "ExecStart=/usr/local/bin/dns2dot " in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace("ExecStart=/usr/local/bin/dns2dot ", f"ExecStart={program} "))
    return copy


def syscall_groups(analyze: str) -> dict[str, list[str]]:
    """systemd's named system-call sets (``@system-service`` ...), as it lists them."""
    out = subprocess.run(
        [analyze, "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = line.strip()
            groups[current] = []
        elif not line.startswith(" "):
            current = None  # the closing notes on ungrouped calls
        elif current and line.strip() and not line.strip().startswith("#"):
            groups[current].append(line.strip())
    return groups


def expand(groups: dict[str, list[str]], names: list[str]) -> set[str]:
    result: set[str] = set()
    for name in names:
        if name.startswith("@"):
            assert name in groups, f"systemd knows no system-call set {name}"
            result |= expand(groups, groups[name])
        else:
            result.add(name)
    return result


# -- Kubernetes --------------------------------------------------------------------


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda d: d.name)
def test_kustomization_lists_every_manifest(directory: Path) -> None:
    """Every manifest in the folder is a resource of its kustomization, and nothing else is."""
    kustomization = load_documents(directory / "kustomization.yaml")
    assert len(kustomization) == 1
    k = kustomization[0]
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert k["kind"] == "Kustomization"
    assert sorted(k["resources"]) == [p.name for p in manifest_files(directory)]
    namespace = k["namespace"]
    assert [d["metadata"]["name"] for d in by_kind(directory, "Namespace")] == [namespace]
    for path, doc in resources_in(directory):
        assert {"apiVersion", "kind", "metadata"} <= set(doc), path
        assert doc["metadata"].get("name"), f"{path}: a {doc['kind']} without a name"
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, f"{path}: {doc['kind']}"


def test_manifests_validate_against_kubernetes_schemas() -> None:
    """Every resource is valid Kubernetes, strictly (no unknown fields), old and new."""
    kv = require_module("kubernetes_validate.utils", "kubernetes-validate>=1.29")
    versions = kv.all_versions()
    assert any(v.startswith(OLDEST_KUBERNETES + ".") for v in versions), (
        f"kubernetes-validate bundles no {OLDEST_KUBERNETES} schemas (it has {versions})"
    )
    resources = all_resources()
    assert len(resources) >= 9
    errors = []
    for version in (OLDEST_KUBERNETES, kv.latest_version()):
        for path, doc in resources:
            name = f"{path.relative_to(REPO_ROOT)}: {doc['kind']}/{doc['metadata']['name']}"
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                errors.append(f"{name} (Kubernetes {version}) at {where}: {exc.message}")
            except kv.SchemaNotFoundError as exc:
                errors.append(f"{name}: {exc.message}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda d: d.name)
def test_kustomize_builds(directory: Path) -> None:
    """kustomize builds the folder into exactly its resources, all in its namespace."""
    kubectl = require_tool("kubectl", "kubernetes-client")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    built = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    expected = resources_in(directory)
    assert sorted((d["kind"], d["metadata"]["name"]) for d in built) == sorted(
        (d["kind"], d["metadata"]["name"]) for _p, d in expected
    )


def test_configmaps_carry_a_dns2dot_config() -> None:
    """The embedded dns2dot YAML parses, uses only known settings, and says what it must."""
    node_local = one(K8S, "ConfigMap")
    sidecar = one(SIDECAR, "ConfigMap")
    expected_listen = {id(node_local): ["0.0.0.0:5353"], id(sidecar): ["127.0.0.1:53"]}
    for configmap in (node_local, sidecar):
        where = f"ConfigMap/{configmap['metadata']['name']}"
        assert list(configmap["data"]) == ["dns2dot.yml"], where
        config = yaml.safe_load(configmap["data"]["dns2dot.yml"])
        check_config_keys(config, where)
        assert config["upstreams"] == CLOUDFLARE, where
        assert config["listen"] == expected_listen[id(configmap)], where
        assert config["metrics"] == "0.0.0.0:9153", where
        assert config["rules"] == CLUSTER_RULES, where


def test_systemd_example_config() -> None:
    config = yaml.safe_load(SYSTEMD_CONFIG.read_text(encoding="utf-8"))
    check_config_keys(config, str(SYSTEMD_CONFIG))
    assert config["upstreams"] == CLOUDFLARE
    assert config["listen"] == ["127.0.0.1:53"], "the unit's capability is for port 53"
    assert host_port(config["metrics"])[0] == "127.0.0.1", "metrics stay on loopback"


def test_pod_security() -> None:
    """Non-root, no privilege to gain, read-only, no capabilities, seccomp, bounded."""
    for name, spec in pod_specs():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["runAsUser"] == 10053, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key, False), f"{name}: {key}"
        assert spec["automountServiceAccountToken"] is False, name
        # Service links would inject DNS2DOT_SERVICE_HOST & co. into dns2dot's settings
        # namespace for a Service named "dns2dot".
        assert spec["enableServiceLinks"] is False, name
        for container in containers_of(spec):
            where = f"{name} container {container['name']}"
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc.get("privileged", False) is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            # NET_BIND_SERVICE would be the only acceptable addition, but for a non-root
            # container the runtimes never make it effective (no ambient capabilities):
            # a container that binds port 53 relies on the pod's sysctl instead.
            assert sc["capabilities"].get("add", []) == [], where
            for port in container.get("ports", []):
                assert "hostPort" not in port, where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{where}: {kind}"


def test_namespaces_enforce_restricted_pod_security() -> None:
    for directory in KUSTOMIZATIONS:
        labels = one(directory, "Namespace")["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted", directory


def test_daemonset_runs_everywhere_and_rolls_safely() -> None:
    daemonset = one(K8S, "DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    assert spec["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in spec["tolerations"], "a toleration for every taint"
    assert spec["dnsPolicy"] == "Default", "dns2dot must not be its own resolver"
    assert "hostNetwork" not in spec or spec["hostNetwork"] is False
    strategy = daemonset["spec"]["updateStrategy"]
    assert strategy["type"] == "RollingUpdate"
    # The new pod is up before the old one goes: a node is never without its resolver.
    assert strategy["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= (
        daemonset["spec"]["template"]["metadata"]["labels"].items()
    )
    container = dns2dot_container(spec)
    assert container["image"] == "dns2dot:latest"
    assert container["imagePullPolicy"] == "IfNotPresent"


def check_probes(container: dict[str, Any], where: str) -> None:
    """readiness /readyz and liveness /healthz on the metrics port, 9153."""
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path, f"{where}: {probe}"
        port = get["port"]
        assert ports.get(port, port) == 9153, f"{where}: {probe} port"


def test_node_local_service_reaches_dns2dot_on_the_same_node() -> None:
    """Service port 53 -> the pod's named ports -> where dns2dot really listens (5353)."""
    daemonset = one(K8S, "DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    container = dns2dot_container(spec)
    config = mounted_config(K8S, spec, container)
    listen = effective_listen(container, config)
    assert listen == config["listen"] == ["0.0.0.0:5353"], (
        f"dns2dot listens on {listen} (the image's DNS2DOT_LISTEN wins over the YAML file)"
    )
    listen_port = host_port(listen[0])[1]
    ports = {p["name"]: p for p in container["ports"]}
    assert host_port(config["metrics"]) == ("0.0.0.0", ports["metrics"]["containerPort"])
    check_probes(container, "DaemonSet")

    services = {s["metadata"]["name"]: s for s in by_kind(K8S, "Service")}
    service = services["dns2dot"]["spec"]
    assert service["internalTrafficPolicy"] == "Local"
    assert (
        service["selector"].items() <= daemonset["spec"]["template"]["metadata"]["labels"].items()
    )
    seen = set()
    for port in service["ports"]:
        target = ports[port["targetPort"]]
        assert port["port"] == 53
        assert target["protocol"] == port["protocol"]
        assert target["containerPort"] == listen_port
        seen.add(port["protocol"])
    assert seen == {"UDP", "TCP"}
    metrics = services["dns2dot-metrics"]["spec"]
    assert metrics["clusterIP"] == "None"
    assert [ports[p["targetPort"]]["containerPort"] for p in metrics["ports"]] == [9153]


def test_sidecar_serves_the_app_on_loopback_port_53() -> None:
    """The app's resolv.conf names 127.0.0.1, where the sidecar really listens (port 53)."""
    pod = one(SIDECAR, "Pod")["spec"]
    container = dns2dot_container(pod)
    assert container in pod["initContainers"] and container["restartPolicy"] == "Always", (
        "dns2dot should be a native sidecar, started before the app"
    )
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    check_probes(container, "sidecar")
    config = mounted_config(SIDECAR, pod, container)
    listen = effective_listen(container, config)
    assert listen == config["listen"] == ["127.0.0.1:53"], (
        f"dns2dot listens on {listen} (the image's DNS2DOT_LISTEN wins over the YAML file)"
    )
    assert pod["dnsPolicy"] == "None"
    assert pod["dnsConfig"]["nameservers"] == ["127.0.0.1"]
    namespace = one(SIDECAR, "Namespace")["metadata"]["name"]
    assert pod["dnsConfig"]["searches"][0] == f"{namespace}.svc.cluster.local"
    # Port 53 as a non-root user: the pod's network namespace lowers the privileged range.
    sysctls = {s["name"]: s["value"] for s in pod["securityContext"]["sysctls"]}
    assert int(sysctls["net.ipv4.ip_unprivileged_port_start"]) <= host_port(listen[0])[1]
    assert host_port(config["metrics"])[0] == "0.0.0.0", "the kubelet probes the pod's address"


# -- systemd -----------------------------------------------------------------------


def test_systemd_unit_has_the_hardening() -> None:
    settings = unit_settings(UNIT)
    expected = {
        "Service.Type": "simple",
        "Service.ExecStart": "/usr/local/bin/dns2dot --config /etc/dns2dot/dns2dot.yml",
        "Service.ExecReload": "/bin/kill -HUP $MAINPID",
        "Service.KillSignal": "SIGTERM",
        "Service.Restart": "on-failure",
        "Service.DynamicUser": "yes",
        "Service.AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        "Service.CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "Service.NoNewPrivileges": "yes",
        "Service.ProtectSystem": "strict",
        "Service.ProtectHome": "yes",
        "Service.PrivateTmp": "yes",
        "Service.PrivateDevices": "yes",
        "Service.ProtectKernelTunables": "yes",
        "Service.ProtectKernelModules": "yes",
        "Service.ProtectKernelLogs": "yes",
        "Service.ProtectControlGroups": "yes",
        "Service.RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "Service.RestrictNamespaces": "yes",
        "Service.LockPersonality": "yes",
        "Service.MemoryDenyWriteExecute": "yes",
        "Service.SystemCallArchitectures": "native",
        "Service.LimitNOFILE": "65536",
        "Install.WantedBy": "multi-user.target",
    }
    for key, value in expected.items():
        assert settings.get(key) == [value], f"{key}: {settings.get(key)}"
    assert settings["Service.SystemCallFilter"][0] == "@system-service"


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` accepts the unit without a single warning."""
    analyze = require_tool("systemd-analyze", "systemd")
    command = [analyze, "verify", "--man=no"]
    # The harness can see a warning: an unknown key is one (exit code 0, but said).
    control = tmp_path / "control.service"
    control.write_text("[Service]\nExecStart=/bin/true\nNoSuchSetting=1\n")
    said = subprocess.run([*command, str(control)], capture_output=True, text=True, timeout=60)
    assert "NoSuchSetting" in said.stdout + said.stderr
    result = subprocess.run(
        [*command, str(runnable_unit(tmp_path))], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == "", result.stdout + result.stderr


def test_systemd_security_exposure(tmp_path: Path) -> None:
    """``systemd-analyze security`` rates the unit's sandbox well below "MEDIUM" (5)."""
    analyze = require_tool("systemd-analyze", "systemd")
    result = subprocess.run(
        [
            analyze,
            "security",
            "--offline=yes",
            "--threshold=20",  # in tenths: exposure 2.0
            "--no-pager",
            str(runnable_unit(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    verdict = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert verdict, result.stdout + result.stderr
    assert result.returncode == 0 and float(verdict.group(1)) <= 2.0, result.stdout


#: Run by the traced dns2dot before anything else: the kernel's own "no memory both
#: writable and executable" (PR_SET_MDWE, Linux 6.3+), what MemoryDenyWriteExecute=
#: enforces; it is kept across exec and cannot be undone.
MDWE_SITECUSTOMIZE = """\
import ctypes, sys
_libc = ctypes.CDLL(None, use_errno=True)
if _libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.stderr.write("sitecustomize: PR_SET_MDWE failed, errno %d\\n" % ctypes.get_errno())
    sys.exit(3)
"""

_STRACE_LINE = re.compile(r"^\d+\s+(?:<\.\.\. (\w+) resumed>|(\w+)\()")


@pytest.fixture
def traced_dns2dot(
    tmp_path: Path, pki: Pki, fake_upstream: Callable[..., FakeUpstream]
) -> Iterator[tuple[int, Path, subprocess.Popen[bytes], Path]]:
    """dns2dot under strace and PR_SET_MDWE, with the unit's file limit, forwarding to a
    fake DoT upstream: (port, strace log, process, output file)."""
    strace = require_tool("strace", "strace")
    upstream = fake_upstream()
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(MDWE_SITECUSTOMIZE)
    port = free_port()
    trace = tmp_path / "strace.log"
    output = tmp_path / "dns2dot.out"
    argv = [strace, "-f", "-qq", "-o", str(trace), sys.executable, "-m", "dns2dot"]
    argv += ["-l", f"{LOOPBACK}:{port}", "-u", upstream.spec, "--cafile", str(pki.ca)]
    env = base_env({"PYTHONPATH": f"{site}:{REPO_ROOT}", "PYTHONDONTWRITEBYTECODE": "1"})

    def limits() -> None:
        # LimitNOFILE=65536 sets soft and hard alike (so dns2dot has nothing to raise);
        # here the hard limit may be lower and unraisable, so only soft = hard.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    with open(output, "wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=limits,
        )
    try:
        deadline = time.monotonic() + 20
        while startup_line(output.read_text(errors="replace")) is None:
            assert proc.poll() is None, output.read_text(errors="replace")
            if time.monotonic() >= deadline:  # a bounded wait for the startup line
                pytest.fail("no startup line:\n" + output.read_text(errors="replace"))
            time.sleep(0.05)
        yield port, trace, proc, output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.integration
def test_dns2dot_runs_inside_the_units_sandbox(
    traced_dns2dot: tuple[int, Path, subprocess.Popen[bytes], Path],
) -> None:
    """dns2dot starts, answers over UDP and TCP through TLS, and stops cleanly while the
    kernel refuses writable+executable memory; and every system call and socket family it
    used is one the unit allows (SystemCallFilter=, RestrictAddressFamilies=,
    MemoryDenyWriteExecute=)."""
    analyze = require_tool("systemd-analyze", "systemd")
    port, trace, proc, output = traced_dns2dot
    for over in (dns.query.udp, dns.query.tcp):
        answer = over(dns.message.make_query("sandbox.example.test", "A"), LOOPBACK, 5, port=port)
        assert answer.rcode() == dns.rcode.NOERROR, f"{over.__name__}: {answer}"
        assert "192.0.2.1" in answer.to_text()
    # SIGTERM to dns2dot itself (strace's child); strace exits with dns2dot's status.
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(children) == 1, children
    os.kill(int(children[0]), signal.SIGTERM)
    assert proc.wait(timeout=15) == 0, output.read_text(errors="replace")

    settings = unit_settings(UNIT)
    groups = syscall_groups(analyze)
    allowed: set[str] = {"execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn"}
    for value in settings["Service.SystemCallFilter"]:
        names = value.split()
        if names[0].startswith("~"):
            allowed -= expand(groups, [names[0][1:], *names[1:]])
        else:
            allowed |= expand(groups, names)
    log = trace.read_text(errors="replace").splitlines()
    used = {m.group(1) or m.group(2) for m in map(_STRACE_LINE.match, log) if m}
    assert {"socket", "bind", "connect", "sendto"} <= used, "the trace looks empty"
    assert not used - allowed, f"system calls the unit's filter refuses: {sorted(used - allowed)}"

    families = set(re.findall(r"\bsocket(?:pair)?\((AF_\w+)", "\n".join(log)))
    allowed_families = set(settings["Service.RestrictAddressFamilies"][0].split())
    assert families and families <= allowed_families, f"socket families used: {families}"

    # MemoryDenyWriteExecute= as systemd's seccomp filter has it: no mapping both writable
    # and executable, and no mprotect() that adds execution at all.
    wx = [
        line
        for line in log
        if re.search(r"\bmmap\(.*PROT_WRITE\|PROT_EXEC|\bmmap\(.*PROT_EXEC\|PROT_WRITE", line)
        or re.search(r"\b(?:pkey_)?mprotect\(.*PROT_EXEC", line)
        or re.search(r"\bshmat\(.*SHM_EXEC", line)
    ]
    assert not wx, "\n".join(wx[:10])


# -- Grafana -----------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    with open(DASHBOARD, encoding="utf-8") as handle:
        data = json.load(handle)
    assert isinstance(data, dict)
    return data


def panels_of(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def parse_promql(expr: str) -> Any:
    promql = require_module("promql_parser", "promql-parser>=0.12")
    for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace("${" + variable[1:] + "}", value).replace(variable, value)
    assert "$" not in expr, f"an unknown Grafana variable in {expr!r}"
    try:
        return promql.parse(expr)
    except ValueError as exc:
        pytest.fail(f"not valid PromQL: {expr!r}: {exc}")


class QueryFacts(NamedTuple):
    """What one PromQL query uses."""

    names: set[str]  # series selected
    labels: set[str]  # label names matched, aggregated by or joined on
    quantiles: list[float]  # histogram_quantile()'s first arguments


def query_facts(expr: str) -> QueryFacts:
    """What ``expr`` uses, read from its syntax tree."""
    promql = require_module("promql_parser", "promql-parser>=0.12")
    names: set[str] = set()
    labels: set[str] = set()
    quantiles: list[float] = []

    def visit(node: Any) -> bool:
        if isinstance(node, promql.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr!r}"
            names.add(node.name)
            labels.update(m.name for m in node.matchers.matchers)
        elif isinstance(node, promql.AggregateExpr) and node.modifier is not None:
            labels.update(node.modifier.labels)
        elif isinstance(node, promql.BinaryExpr) and node.modifier is not None:
            if node.modifier.matching is not None:
                labels.update(node.modifier.matching.labels)
            labels.update(node.modifier.group_labels or [])
        elif isinstance(node, promql.Call) and node.func.name == "histogram_quantile":
            quantiles.append(node.args[0].val)
        return True

    promql.walk(parse_promql(expr), visit)
    return QueryFacts(names, labels, quantiles)


def series_labels(name: str) -> frozenset[str]:
    """The labels series ``name`` carries; fails for a name dns2dot does not export."""
    if name in METRICS and name not in HISTOGRAMS:
        return METRICS[name] | TARGET_LABELS
    for suffix, extra in (("_bucket", {"le"}), ("_sum", set()), ("_count", set())):
        base = name.removesuffix(suffix)
        if name.endswith(suffix) and base in HISTOGRAMS:
            return METRICS[base] | TARGET_LABELS | extra
    pytest.fail(f"the dashboard queries {name!r}, which dns2dot does not export")


def test_dashboard_is_a_grafana_dashboard() -> None:
    board = dashboard()
    assert board["schemaVersion"] == 39
    assert board["title"] and re.fullmatch(r"[A-Za-z0-9_-]{1,40}", board["uid"])
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    instance = variables["instance"]
    assert instance["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    metric = re.fullmatch(r"label_values\((\w+),\s*instance\)", instance["query"]["query"])
    assert metric and metric.group(1) in METRICS, instance["query"]

    ids = [p["id"] for p in panels_of(board)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels_of(board):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                other = cells.setdefault((x, y), panel["title"])
                assert other == panel["title"], f"{panel['title']!r} overlaps {other!r}"
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat", "state-timeline", "gauge", "bargauge"}
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]


def test_dashboard_queries_only_dns2dot_metrics() -> None:
    """Every query parses as PromQL, names only exported series and only their labels;
    and every exported metric appears somewhere."""
    used: set[str] = set()
    for panel in panels_of(dashboard()):
        for target in panel.get("targets", []):
            names, labels, _quantiles = query_facts(target["expr"])
            assert names, f"{panel['title']}: a query without a metric"
            allowed = frozenset().union(*(series_labels(n) for n in names))
            assert labels <= allowed, f"{panel['title']}: unknown labels {labels - allowed}"
            used |= {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}
    assert used == set(METRICS), f"metrics with no panel: {sorted(set(METRICS) - used)}"


def test_dashboard_has_the_promised_panels() -> None:
    panels = {p["title"]: p for p in panels_of(dashboard())}
    missing = set(REQUIRED_PANELS) - set(panels)
    assert not missing, f"panels missing: {sorted(missing)}"
    for title, metrics in REQUIRED_PANELS.items():
        names = facts(panels[title]).names
        assert metrics <= names, f"{title}: uses {names}"
    assert sorted(facts(panels["Latency p50 / p95 / p99"]).quantiles) == [0.5, 0.95, 0.99]
    assert "rcode" in facts(panels["Queries per second by rcode"]).labels
    assert "resumed" in facts(panels["TLS resumption ratio"]).labels


def facts(panel: dict[str, Any]) -> QueryFacts:
    """Everything the queries of ``panel`` use, together."""
    every = [query_facts(target["expr"]) for target in panel["targets"]]
    return QueryFacts(
        set().union(*(f.names for f in every)),
        set().union(*(f.labels for f in every)),
        [q for f in every for q in f.quantiles],
    )
