"""Binding port 53 without the privilege to: one clear line and exit code 2.

The process keeps running as root but without CAP_NET_BIND_SERVICE (``setpriv
--bounding-set=-net_bind_service``), which is exactly the situation of an unprivileged
user or a container without the capability.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from support import REPO_ROOT
from support.proc import base_env, dns2dot_command, require_tool

pytestmark = pytest.mark.integration


def test_port_53_without_privilege_says_how_to_fix_it() -> None:
    start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    assert start > 53, (
        f"net.ipv4.ip_unprivileged_port_start is {start}: binding 53 needs no privilege "
        "on this machine, so this test cannot provoke the error"
    )
    setpriv = require_tool("setpriv")
    argv = [
        setpriv,
        "--bounding-set=-net_bind_service",
        *dns2dot_command(["-l", "127.0.0.1:53", "-u", "127.0.0.1#dns.test"]),
    ]
    result = subprocess.run(
        argv, cwd=REPO_ROOT, env=base_env(), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--listen 127.0.0.1:53: permission denied" in lines[0]
    assert "CAP_NET_BIND_SERVICE" in lines[0] and "above 1024" in lines[0]
