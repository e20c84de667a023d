"""The layers of docs/ARCHITECTURE.md, checked: who may import whom, and what stays pure.

``protocol < policy < transport < upstream < serve < the top level``: a module imports
only from its own layer or those below (read from the source with ``ast``, imports
under ``TYPE_CHECKING`` included). The pure modules (``protocol/``, ``policy/``,
``upstream/spec.py`` and ``config.py``) are also imported each in a fresh interpreter,
which must not load tornado, asyncio, socket or ssl on the way; and none of them
imports a clock (``time``), which Python itself loads at startup, so that one is
checked in the source only.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dns2dot"
LAYERS = ("protocol", "policy", "transport", "upstream", "serve")
TOP = len(LAYERS)  # cli, config, proxy, workers, metrics, logs, check, probe, ...
FORBIDDEN_IN_PURE = ("tornado", "asyncio", "socket", "ssl")
NO_CLOCK = ("time",)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


MODULES = all_modules()
PURE = sorted(
    name
    for name in MODULES
    if name.split(".")[1:2] in (["protocol"], ["policy"])
    or name in ("dns2dot.upstream.spec", "dns2dot.config")
)


def layer(name: str) -> int:
    """The layer of a dns2dot module: its index in :data:`LAYERS`, or :data:`TOP`."""
    parts = name.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return TOP


def imports(name: str, path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the source, relative ones resolved; for
    ``from package import name`` the submodule ``package.name`` when there is one."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            for alias in node.names:
                if f"{module}.{alias.name}" in MODULES:
                    found.append((node.lineno, f"{module}.{alias.name}"))
    return found


def test_the_layers_are_all_there() -> None:
    """The check below is only as good as its map: every layer has modules."""
    for name in LAYERS:
        assert any(layer(module) == LAYERS.index(name) for module in MODULES), name
    assert {"dns2dot.protocol.wire", "dns2dot.policy.cache", "dns2dot.config"} <= set(PURE)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_only_from_its_own_layer_or_below(name: str) -> None:
    own = layer(name)
    wrong = [
        f"line {line}: {module} ({LAYERS[layer(module)] if layer(module) < TOP else 'top'})"
        for line, module in imports(name, MODULES[name])
        if module.split(".")[0] == "dns2dot" and module != "dns2dot" and layer(module) > own
    ]
    where = LAYERS[own] if own < TOP else "the top level"
    assert not wrong, f"{name} is in {where} but imports from above it: {wrong}"


@pytest.mark.parametrize("name", PURE)
def test_pure_module_source_imports_no_io_and_no_clock(name: str) -> None:
    bad = [
        f"line {line}: {module}"
        for line, module in imports(name, MODULES[name])
        if module.split(".")[0] in (*FORBIDDEN_IN_PURE, *NO_CLOCK)
    ]
    assert not bad, f"{name} is pure but imports {bad}"


# dnspython's own import (dns.name -> importlib.metadata -> email.utils) loads socket
# without using it: a module that uses dnspython is probed with it loaded first, so
# what is judged is what the module itself brings in.
_PROBE = """
import importlib, json, sys
for preload in filter(None, sys.argv[3].split(",")):
    importlib.import_module(preload)
before = set(sys.modules)
importlib.import_module(sys.argv[1])
new = set(sys.modules) - before
print(json.dumps(sorted(m for m in new if m.split(".")[0] in sys.argv[2].split(","))))
"""


def _preload(name: str) -> str:
    """``dns.name`` for a module that imports dnspython, else nothing."""
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current in seen or current not in MODULES:
            continue
        seen.add(current)
        for _, module in imports(current, MODULES[current]):
            if module.split(".")[0] == "dns":
                return "dns.name"
            todo.append(module)
    return ""


@pytest.mark.parametrize("name", PURE)
def test_pure_module_loads_no_io_in_a_fresh_interpreter(name: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, name, ",".join(FORBIDDEN_IN_PURE), _preload(name)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert not loaded, f"importing {name} loaded {loaded}"


def test_the_probe_notices_io() -> None:
    """The fresh-interpreter check fails when it should: a module above does load IO."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _PROBE,
            "dns2dot.transport.sockets",
            ",".join(FORBIDDEN_IN_PURE),
            "",
        ],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    assert "socket" in json.loads(done.stdout)
