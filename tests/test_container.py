"""The container files, checked without a container engine (none runs on our machines).

The Dockerfile is linted with hadolint, and its command line is run for real: the
ENTRYPOINT and CMD with the environment the Dockerfile sets, against the test upstream.
Only the listen address is moved from the container's 0.0.0.0:5353 to a free loopback
port (tests talk to loopback only), and the upstream is the test one. docker-compose.yml
must publish exactly the port the image listens on, on the host's loopback.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import dns.message
import dns.query
import pytest
import yaml
from support import REPO_ROOT
from support.net import LOOPBACK, free_port
from support.pki import Pki
from support.proc import base_env, require_tool
from support.unbound import UnboundUpstream

pytestmark = pytest.mark.integration

DOCKERFILE = REPO_ROOT / "Dockerfile"
COMPOSE = REPO_ROOT / "docker-compose.yml"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    out = []
    for line in joined:
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def exec_form(args: str) -> list[str]:
    """A JSON exec-form argument list (``["a", "b"]``), or shell words."""
    args = args.strip()
    if args.startswith("["):
        value = json.loads(args)
        assert isinstance(value, list)
        return [str(v) for v in value]
    return shlex.split(args)


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in dockerfile_instructions():
        if instruction == "ENV":
            for word in shlex.split(args):
                key, sep, value = word.partition("=")
                assert sep, f"ENV without '=': {word}"
                env[key] = value
    return env


def image_command() -> list[str]:
    entrypoint: list[str] = []
    cmd: list[str] = []
    for instruction, args in dockerfile_instructions():
        if instruction == "ENTRYPOINT":
            entrypoint = exec_form(args)
        elif instruction == "CMD":
            cmd = exec_form(args)
    return entrypoint + cmd


def healthcheck_command() -> list[str]:
    for instruction, args in dockerfile_instructions():
        if instruction == "HEALTHCHECK":
            _, _, command = args.partition("CMD ")
            return exec_form(command)
    raise AssertionError("the Dockerfile has no HEALTHCHECK")


def test_dockerfile_passes_hadolint() -> None:
    """hadolint's best practices (pinned base, no root user, exec form...)."""
    hadolint = require_tool("hadolint")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_unprivileged_on_a_high_port() -> None:
    """A non-root USER, and a listen port above 1024 so no capability is needed."""
    users = [args for instruction, args in dockerfile_instructions() if instruction == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    listen = image_env()["DNS2DOT_LISTEN"]
    assert int(listen.rsplit(":", 1)[1]) > 1024


def test_compose_publishes_the_image_port_on_host_loopback() -> None:
    """``docker compose up`` gives 127.0.0.1:53 on the host, UDP and TCP, and nothing else."""
    compose = yaml.safe_load(COMPOSE.read_text())
    service = compose["services"]["dns2dot"]
    image_port = image_env()["DNS2DOT_LISTEN"].rsplit(":", 1)[1]
    ports = sorted(service["ports"])
    assert ports == [f"127.0.0.1:53:{image_port}/tcp", f"127.0.0.1:53:{image_port}/udp"]
    for key in service.get("environment", {}):
        assert key.startswith("DNS2DOT_") or key == "DNSSERVER", key


def test_image_command_serves_dns_and_passes_its_healthcheck(
    unbound: UnboundUpstream, pki: Pki, tmp_path: Path
) -> None:
    """The Dockerfile's ENTRYPOINT + CMD with its ENV, run for real; then its HEALTHCHECK."""
    command = image_command()
    assert command, "no ENTRYPOINT/CMD"
    executable = shutil.which(command[0])
    assert executable, f"{command[0]} is not installed (pip install -e .)"
    port = free_port()
    env = base_env(
        {
            **image_env(),
            "DNS2DOT_LISTEN": f"{LOOPBACK}:{port}",
            "DNS2DOT_UPSTREAM": unbound.spec,
            "DNS2DOT_CAFILE": str(pki.ca),
        }
    )
    log = tmp_path / "dns2dot.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [executable, *command[1:]], env=env, stdout=err, stderr=subprocess.STDOUT
        )
    try:
        answer = None
        for _ in range(100):  # bounded: up to ~10 s for the startup
            if "udp+tcp" in log.read_text():
                break
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        query = dns.message.make_query("a.example.test", "A")
        answer = dns.query.udp(query, LOOPBACK, port=port, timeout=5)
        assert answer.rcode() == 0 and answer.answer, answer
        health = healthcheck_command()
        result = subprocess.run(
            [shutil.which(health[0]) or health[0], *health[1:]],
            env=env,
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0, log.read_text()


def test_healthcheck_fails_when_nothing_listens(tmp_path: Path) -> None:
    """The probe really asks: with no proxy on the port it exits non-zero."""
    health = healthcheck_command()
    env = base_env({**image_env(), "DNS2DOT_LISTEN": f"{LOOPBACK}:{free_port()}"})
    result = subprocess.run(
        [shutil.which(health[0]) or health[0], *health[1:], "--timeout", "0.5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode != 0
