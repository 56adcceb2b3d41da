"""The boundaries of the layout, kept by walking the imports (DESIGN.md, "Layout").

- Protocol cores import nothing from Twisted or treq (not even through another module):
  they are plain function calls and sans-IO state machines, testable without a reactor.
- Channels never import each other: a source hands a Message to the store, a sink takes
  one from the dispatcher.  Protocol packages (smpp, ami) and the core are shared.
- The store knows no HTTP, SMPP or Asterisk; service.py is the only module that knows
  every channel.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Set

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "websmsd"

# Modules whose whole import closure must stay free of Twisted and treq.
PURE_PREFIXES = (
    "websmsd.channel", "websmsd.message", "websmsd.routing", "websmsd.numbers",
    "websmsd.text", "websmsd.net", "websmsd.endpoints", "websmsd.metrics", "websmsd.sms",
    "websmsd.http.h1",
    "websmsd.config", "websmsd.asterisk.agi",
    "websmsd.asterisk.callfile", "websmsd.ami.protocol", "websmsd.smpp.pdu",
    "websmsd.smpp.receipt", "websmsd.itsp.phpcompat", "websmsd.itsp.request",
    "websmsd.itsp.response", "websmsd.itsp.body", "websmsd.itsp.fields",
    "websmsd.itsp.inbound", "websmsd.itsp.signatures", "websmsd.itsp.presets",
    "websmsd.goip.udp", "websmsd.goip.web", "websmsd.goip.outcome", "websmsd.goip.inbox",
    "websmsd.goip.sim", "websmsd.yeastar.tg", "websmsd.yeastar.tg_answers", "websmsd.yeastar.messages",
    "websmsd.smpp.pdu", "websmsd.android.answer", "websmsd.ami.protocol",
    "websmsd.android.smssync", "websmsd.android.medic", "websmsd.android.basicauth",
    "websmsd.android.presence", "websmsd.android.smsgate", "websmsd.android.smsgate_inbox",
    "websmsd.textsplit", "websmsd.phones.contacts", "websmsd.phones.notices",
)
CHANNELS = ("itsp", "asterisk", "goip", "yeastar", "android", "phones")
FORBIDDEN = ("twisted", "treq")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _top_level_imports(path: Path, module: str) -> Set[str]:
    """What a module imports when it is imported: module-level statements only (an
    import inside a function runs when the function does)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: Set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(nodes) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    name = ".".join(base + ([node.module] if node.module else []))
                else:
                    name = node.module or ""
                found.add(name)
                for alias in node.names:  # `from websmsd.itsp import presets`
                    found.add(f"{name}.{alias.name}")
            elif isinstance(node, (ast.If, ast.Try)):
                if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
                    continue
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
                visit(getattr(node, "finalbody", []))

    visit(tree.body)
    return found


def _graph() -> Dict[str, Set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        imports = _top_level_imports(path, name)
        graph[name] = {i for i in imports if i in modules or i.split(".")[0] in FORBIDDEN}
        # Importing a.b.c runs a/__init__ and a/b/__init__ too.
        for i in list(graph[name]):
            parts = i.split(".")
            for n in range(1, len(parts)):
                parent = ".".join(parts[:n])
                if parent in modules:
                    graph[name].add(parent)
    return graph


GRAPH = _graph()


def _closure(module: str) -> Set[str]:
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        for dep in GRAPH.get(current, ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_protocol_cores_import_nothing_from_twisted():
    checked = [m for m in GRAPH if any(m == p or m.startswith(p + ".") for p in PURE_PREFIXES)]
    assert "websmsd.itsp.request" in checked and "websmsd.config.websmsd" in checked
    for module in checked:
        bad = sorted(d for d in _closure(module) if d.split(".")[0] in FORBIDDEN)
        assert not bad, f"{module} imports {bad[0]} (through {sorted(_closure(module))})"


def test_channels_never_import_each_other():
    for module, deps in GRAPH.items():
        parts = module.split(".")
        if len(parts) < 3 or parts[1] not in CHANNELS:
            continue
        own = parts[1]
        others = sorted(d for d in deps if d.split(".")[1:2] and d.split(".")[1] in CHANNELS
                        and d.split(".")[1] != own)
        assert not others, f"{module} (channel {own}) imports {others}"


def test_the_store_knows_no_channel_and_only_service_knows_them_all():
    store_deps = _closure("websmsd.store")
    assert not [d for d in store_deps if d.split(".")[1:2] and
                d.split(".")[1] in CHANNELS + ("http", "smpp", "ami")], store_deps
    for module in GRAPH:
        if module == "websmsd.service":
            continue
        path = (PACKAGE.parent / module.replace(".", "/")).with_suffix(".py")
        if not path.exists():
            path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
        text = path.read_text(encoding="utf-8")
        # Lazy imports count too here: knowing every channel is service.py's job.
        every = {c for c in CHANNELS if f"websmsd.{c}" in text}
        assert len(every) <= 1 or module.split(".")[1] in ("tap", "cli"), (module, every)


def test_what_runs_from_the_start_leaves_twisted_web_server_and_client_out():
    # twisted.web.server (with twisted.spread: ~2 MB on a Pi) is imported by the status
    # page's Site, built with its first connection (websmsd.http.ondemand); the webhook
    # listener, the channels and the wiring do without it.
    # Nor twisted.web's client (websmsd.http.oneshot polls SMS Gateway for Android).
    for module in ["websmsd.service", "websmsd.http.leanhttp", "websmsd.http.site",
                   "websmsd.http.ondemand", "websmsd.http.oneshot",
                   "websmsd.itsp.webhook"] + sorted(
                       m for m in GRAPH if m.split(".")[1:2] and m.split(".")[1] in CHANNELS):
        heavy = sorted(d for d in _closure(module)
                       if d.startswith(("twisted.web.server", "twisted.web.http.",
                                        "twisted.spread", "twisted.web.client",
                                        "twisted.web._newclient"))
                       or d == "twisted.web.http")
        assert not heavy, (module, heavy)


def test_the_walk_sees_lazy_imports_as_lazy():
    # service.py imports its channels inside make_service: they are not module-level.
    assert not any(d.startswith("websmsd.itsp.client") for d in GRAPH["websmsd.service"])
    assert "twisted" not in {d.split(".")[0] for d in _closure("websmsd.config")}
    # ...and sees what is imported at module level, also through other modules.
    assert "twisted.web.resource" in _closure("websmsd.itsp.webhook")
    assert "twisted.internet.defer" in _closure("websmsd.store")
