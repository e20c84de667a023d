"""Operating the encrypted listeners: metrics by transport, and the deployment examples.

Why: an operator sees DoT and DoH clients in the same metrics as the plain ones
(``transport`` label ``dot`` and ``doh`` beside ``udp`` and ``tcp``), and enables the
listeners from docker-compose.yml and the Kubernetes overlay by following their
comments; those examples must say the same thing dns2dot understands.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from support import REPO_ROOT
from support.listeners import dot_exchange, start_listening, tls_connect
from support.net import a_addresses, free_port, make_query, udp_query
from support.pki import TLS_NAME, Pki
from support.proc import Dns2Dot, require_tool
from support.scrape import wait_for_metrics
from support.unbound import UnboundUpstream

from dns2dot import config

COMPOSE = REPO_ROOT / "docker-compose.yml"
OVERLAY = REPO_ROOT / "deploy" / "kubernetes-encrypted"


@pytest.mark.integration
def test_metrics_by_transport(
    unbound: UnboundUpstream, pki: Pki, dns2dot: Callable[..., Dns2Dot], tmp_path: Path
) -> None:
    metrics_port = free_port()
    listening = start_listening(
        dns2dot,
        unbound.spec,
        pki,
        tmp_path / "certs",
        extra=["--metrics", f"127.0.0.1:{metrics_port}", "--cache-size", "0"],
    )
    udp_query(listening.proc.port, make_query("a.example.test"))
    with tls_connect(listening.tls_port, pki) as sock:
        for _ in range(3):
            assert a_addresses(dot_exchange(sock, make_query("a.example.test"))) == {"192.0.2.10"}
    curl = require_tool("curl")
    for _ in range(2):
        out = subprocess.run(
            [
                curl,
                "-sS",
                "--max-time",
                "10",
                "--cacert",
                str(pki.ca),
                "--resolve",
                f"{TLS_NAME}:{listening.https_port}:127.0.0.1",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                f"https://{TLS_NAME}:{listening.https_port}/dns-query?dns="
                "AAABAAABAAAAAAAAAWEHZXhhbXBsZQR0ZXN0AAABAAE",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert out.stdout == "200", out.stderr
    metrics = wait_for_metrics(
        metrics_port,
        lambda m: (
            m.by("dns2dot_queries_total", "transport").get("doh", 0) >= 2
            and m.by("dns2dot_queries_total", "transport").get("dot", 0) >= 3
        ),
    )
    by_transport = metrics.by("dns2dot_queries_total", "transport")
    assert by_transport.get("udp") == 1
    assert by_transport.get("dot") == 3
    assert by_transport.get("doh") == 2
    latency = metrics.by("dns2dot_query_duration_seconds_count", "transport")
    assert latency.get("dot") == 3 and latency.get("doh") == 2


def _uncommented_compose() -> dict[str, object]:
    """docker-compose.yml with the lines marked "encrypted" uncommented."""
    lines = []
    for line in COMPOSE.read_text().splitlines():
        if line.rstrip().endswith("# encrypted") or "# encrypted:" in line:
            line = re.sub(r"^(\s*)# ", r"\1", line, count=1)
        lines.append(line)
    document = yaml.safe_load("\n".join(lines))
    assert isinstance(document, dict)
    return document


def test_compose_encrypted_lines_agree() -> None:
    service = _uncommented_compose()["services"]["dns2dot"]  # type: ignore[index]
    env = {k: str(v) for k, v in service["environment"].items()}
    parsed = config.load([], env)
    published = {p.split(":")[-1] for p in service["ports"]}
    assert f"{parsed.listen_tls[0].port}/tcp" in published
    assert f"{parsed.listen_https[0].port}/tcp" in published
    mounts = [volume.split(":")[1] for volume in service["volumes"]]
    for path in (parsed.tls_cert, parsed.tls_key):
        assert path is not None and any(path.startswith(m + "/") for m in mounts)


def test_kubernetes_overlay_builds_and_agrees() -> None:
    kubectl = require_tool("kubectl")
    out = subprocess.run(
        [kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Service", "dns2dot-encrypted") in kinds
    assert ("DaemonSet", "dns2dot") in kinds
    daemonset = next(d for d in docs if d["kind"] == "DaemonSet")
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    parsed = config.load([], env)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["dot"] == parsed.listen_tls[0].port
    assert ports["doh"] == parsed.listen_https[0].port
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert parsed.tls_cert is not None and parsed.tls_cert.startswith(mounts["tls"] + "/")
    volumes = {v["name"]: v for v in daemonset["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "dns2dot-tls"
    service = next(d for d in docs if d["metadata"]["name"] == "dns2dot-encrypted")
    assert {p["port"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        853: "dot",
        443: "doh",
    }
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert {ports["dot"], ports["doh"], 5353, 9153} <= allowed
