#!/usr/bin/env bash
# The test command (README "Testing"): installs what the tests need, then runs them all.
#
# Debian tools come from apt when missing (root needed; elsewhere, install them first:
# a missing tool fails the tests, it never skips them). Python packages go into the
# current interpreter. Then lint, type check and the whole pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pair in unbound:unbound dig:bind9-dnsutils kdig:knot-dnsutils dnsperf:dnsperf \
            socat:socat stubby:stubby dnsdist:dnsdist systemd-analyze:systemd \
            strace:strace kubectl:kubernetes-client curl:curl ip:iproute2 unshare:util-linux; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need_apt+=("${pair#*:}")
done
if [ "${#need_apt[@]}" -gt 0 ]; then
    echo "installing Debian packages: ${need_apt[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# A package install may start the distribution's own daemons; ours run on their own ports.

python3 -m pip install -q --disable-pip-version-check -e '.[test]'

python3 -m ruff check dns2dot tests bench dnsproxy.py
python3 -m ruff format --check dns2dot tests bench dnsproxy.py
python3 -m mypy
python3 -m pytest "$@"
