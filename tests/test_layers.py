"""The import direction of DESIGN.md §2 and the no-torch rule of the edge, checked on the source."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "shared": {"edge", "cloud", "opcua_sim", "fabpm"},
    "edge": {"cloud", "opcua_sim", "fabpm", "torch"},
    "cloud": {"edge", "opcua_sim", "fabpm"},
    "opcua_sim": {"edge", "cloud", "fabpm", "torch"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_packages_import_only_downwards():
    bad = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((REPO / package).rglob("*.py")):
            hits = _imports(path) & forbidden
            if hits:
                bad.append(f"{path.relative_to(REPO)} imports {sorted(hits)}")
    assert not bad, "\n".join(bad)


def test_shared_outside_models_never_imports_torch():
    bad = [
        str(p.relative_to(REPO))
        for p in sorted((REPO / "shared").rglob("*.py"))
        if "models" not in p.relative_to(REPO / "shared").parts and "torch" in _imports(p)
    ]
    assert not bad, f"torch imported outside shared.models: {bad}"


def test_importing_the_edge_pulls_no_torch():
    code = (
        "import importlib, pkgutil, sys\n"
        "import shared, edge\n"
        "for m in pkgutil.walk_packages(edge.__path__, 'edge.'):\n"
        "    importlib.import_module(m.name)\n"
        "for m in pkgutil.walk_packages(shared.__path__, 'shared.'):\n"
        "    if not m.name.startswith('shared.models'):\n"
        "        importlib.import_module(m.name)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False", "importing shared/edge loaded torch"
