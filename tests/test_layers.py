"""The layers are one-way: every import of every module, at any depth, obeys the layer rule.

``eeipu`` and ``cache`` are the ground floor and know nothing of each other or of what is
built on them; ``pipelines`` uses both; ``api`` composes everything; ``bench`` stands beside
the product, so no product package imports it and no product package holds a benchmark.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("eeipu", "cache", "pipelines", "api", "bench")
PRODUCT = ("eeipu", "cache", "pipelines", "api")
FORBIDDEN = {
    "eeipu": {"cache", "pipelines", "api", "bench"},
    "cache": {"eeipu", "pipelines", "api", "bench"},
    "pipelines": {"api", "bench"},
    "api": {"bench"},
    "bench": set(),
}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module that ``source`` (the module ``module``) imports, anywhere in its body.

    Covers ``import x``, ``from x import y`` (relative ones resolved against ``module``) and
    ``importlib.import_module("x")`` / ``__import__("x")`` with a literal name.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                up = node.level - 1
                if up > len(base):
                    raise ValueError(f"relative import beyond the top package in {module}")
                base = base[: len(base) - up]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target:
                found.add(target)
            found.update(
                f"{target}.{a.name}" if target else a.name for a in node.names if a.name != "*"
            )
        elif isinstance(node, ast.Call) and node.args:
            f = node.func
            name = (
                f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            )
            arg = node.args[0]
            if (
                name in ("import_module", "__import__")
                and isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
            ):
                found.add(arg.value)
    return found


def violations(root: Path) -> list[str]:
    """``"module imports target"`` for every import in ``root`` that breaks the layer rule."""
    out = []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            mod = _module_name(path, root)
            for target in sorted(
                imports_of(path.read_text(), mod, is_package=path.name == "__init__.py")
            ):
                if target.split(".")[0] in FORBIDDEN[pkg]:
                    out.append(f"{mod} imports {target}")
    return out


def benchmarks_inside_the_product(root: Path) -> list[str]:
    """Modules of the product packages whose name says they are a benchmark."""
    return [
        _module_name(path, root)
        for pkg in PRODUCT
        for path in sorted((root / pkg).rglob("*.py"))
        if path.stem.startswith("bench")
    ]


def test_every_import_follows_the_layers() -> None:
    assert all(any((ROOT / pkg).rglob("*.py")) for pkg in PRODUCT)
    assert violations(ROOT) == []


def test_the_benchmarks_live_beside_the_product() -> None:
    assert (ROOT / "bench" / "cli.py").is_file()
    assert benchmarks_inside_the_product(ROOT) == []


def test_imports_of_sees_local_relative_and_dynamic_imports() -> None:
    src = (
        "import os\n"
        "def f():\n"
        "    from ..bench import cli\n"
        "    import importlib\n"
        "    return importlib.import_module('bench.api_load')\n"
        "class C:\n"
        "    def m(self):\n"
        "        from . import sibling\n"
    )
    got = imports_of(src, "api.cli.thing")
    assert {"os", "api.bench", "api.bench.cli", "bench.api_load", "api.cli.sibling"} <= got
    assert "api" in imports_of("from .. import x\n", "api.cli", is_package=True)


def test_the_check_finds_a_violation(tmp_path: Path) -> None:
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "cache" / "keys.py").write_text("def f():\n    from eeipu.space import Float\n")
    (tmp_path / "api" / "cli.py").write_text("from bench import cli\n")
    (tmp_path / "pipelines" / "core.py").write_text("from .. import api\n")
    (tmp_path / "bench" / "cli.py").write_text("import api\nimport cache\n")  # allowed
    assert violations(tmp_path) == [
        "cache.keys imports eeipu.space",
        "cache.keys imports eeipu.space.Float",
        "pipelines.core imports api",
        "api.cli imports bench",
        "api.cli imports bench.cli",
    ]
