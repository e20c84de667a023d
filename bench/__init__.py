"""dns2dot benchmark harness: dns2dot against its peers on loopback, in one run.

Run it as ``python -m bench`` (see bench/README.md). Every figure is meant to be read
as a ratio against the peers measured in the same run, never as an absolute number.
"""
