"""The layout's rules (docs/architecture.md; DESIGN.md "Layout"): imports go one way only, from the
top of the drawing down, and no module imports itself round a circle — ``TYPE_CHECKING`` imports
included, since they tie the code together all the same."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "smart_auth", "consent")

LAYERS: dict[str, int] = {
    # the application: the factory and the command line
    "gateway.cli": 90,
    "gateway.app": 80,
    # the patient's own pages, on the authorization server's sign-in and pages
    "gateway.account": 75,
    # the authorization server's web face, the typed app state it reads, the audit log
    "gateway.oauth": 70,
    "gateway.appkeys": 60,
    # the FHIR API and what it shares with the administration side
    "gateway.fhir": 50,
    "gateway.erasure": 50,
    # the audit trail, which the FHIR API and the authorization server write to, and the encrypted
    # cache (below the FHIR API and erasure, which read, shred and purge through it)
    "gateway.audit": 45,
    "gateway.cache": 45,
    # plumbing: the proxy to the FHIR server, the web layer, settings, the local stack
    "gateway.proxy": 40,
    # the frame and the message catalogue of every server-rendered page
    "gateway.pages": 35,
    "gateway.web": 30,
    "gateway.settings": 20,
    "gateway.localstack": 20,
    # the SMART core, its accounts, and what every package may use
    "smart_auth": 15,
    "smart_auth.accounts": 12,
    "smart_auth.key_provider": 10,
    "smart_auth.clock": 10,
    "smart_auth.idempotent": 9,  # the consent store's change counter uses it too
    "consent": 10,
}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    """The box of the drawing a module belongs to."""
    parts = module.split(".")
    if parts[0] == "gateway":
        return ".".join(parts[:2]) if len(parts) > 1 else "gateway"
    if parts[0] == "smart_auth" and len(parts) > 1 and f"smart_auth.{parts[1]}" in LAYERS:
        return f"smart_auth.{parts[1]}"
    return parts[0]


def _imports() -> dict[str, set[str]]:
    modules = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    edges: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names]
                edges[module] |= {n if n in modules else node.module for n in names} & set(modules)
            elif isinstance(node, ast.Import):
                edges[module] |= {a.name for a in node.names} & set(modules)
        edges[module].discard(module)
    return edges


def test_imports_go_down_the_drawing_only() -> None:
    wrong = []
    for module, targets in _imports().items():
        for target in targets:
            here, there = _unit(module), _unit(target)
            assert here in LAYERS and there in LAYERS, f"{module}: add its box to the drawing"
            if here != there and LAYERS[there] >= LAYERS[here]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports that go up or sideways:\n" + "\n".join(sorted(wrong))


def test_no_module_imports_itself_round_a_circle() -> None:
    edges = _imports()
    seen: set[str] = set()
    for start in sorted(edges):
        stack = [(start, (start,))]
        while stack:
            module, path = stack.pop()
            for target in edges.get(module, ()):
                assert target != start, " -> ".join((*path, target))
                if target not in seen and target not in path:
                    stack.append((target, (*path, target)))
        seen.add(start)
