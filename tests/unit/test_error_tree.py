"""The error tree drawn in orders/errors.py's docstring is the code's (issue #13, item 7).

Every exception class defined in ``orders``, ``adapters`` and ``dispatcher`` is either drawn on
the tree, under one of its own parents, with its other parents named on its line, or listed
below the tree as outside it on purpose. Class names are unique, so a name in the drawing means
one class.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from dataclasses import dataclass
from types import ModuleType

import pytest

from orders import errors

PACKAGES = ("orders", "adapters", "dispatcher")
# A line of the drawing: "│   " or "    " per level, then "├── " or "└── ", then the name.
_TREE_LINE = re.compile(
    r"^(?P<prefix>(?:[│ ] {3})*)(?:[├└]── )?(?P<name>[A-Za-z_]\w*)(?P<rest>.*)$"
)
_OUTSIDER = re.compile(r"``(?P<name>\w+)``\s+\((?P<module>[\w.]+)\)")


@dataclass(frozen=True)
class Drawn:
    name: str
    parent: str | None
    text: str  # the rest of its line: the module and the "also" parents are named there


def _modules() -> list[ModuleType]:
    found = []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        found.append(package)
        for info in pkgutil.walk_packages(package.__path__, f"{package_name}."):
            found.append(importlib.import_module(info.name))
    return found


def _classes_in(owner: ModuleType | type, module: str) -> list[type[BaseException]]:
    """Exception classes defined in ``module``, at its top level or inside its classes."""
    found: list[type[BaseException]] = []
    for value in vars(owner).values():
        if inspect.isclass(value) and value.__module__ == module and value is not owner:
            if issubclass(value, BaseException):
                found.append(value)
            found.extend(_classes_in(value, module))
    return found


def exception_classes() -> list[type[BaseException]]:
    classes: dict[str, type[BaseException]] = {}
    for module in _modules():
        for cls in _classes_in(module, module.__name__):
            classes[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return list(classes.values())


def drawing() -> dict[str, Drawn]:
    """The tree in the docstring: each class's drawn parent, from the indentation."""
    doc = errors.__doc__ or ""
    lines = doc[doc.index("\nDispatchError\n") + 1 :].splitlines()
    drawn: dict[str, Drawn] = {}
    path: list[str] = []
    for line in lines:
        if not line.strip():
            break
        match = _TREE_LINE.match(line)
        assert match, f"not a line of the tree: {line!r}"
        depth = len(match["prefix"]) // 4 + (1 if line[len(match["prefix"])] in "├└" else 0)
        del path[depth:]
        name = match["name"]
        assert name not in drawn, f"{name} is drawn twice"
        drawn[name] = Drawn(name, path[-1] if path else None, match["rest"])
        path.append(name)
    return drawn


def outsiders() -> dict[str, str]:
    """The classes listed as outside the tree on purpose, with the module each is named in."""
    doc = errors.__doc__ or ""
    section = doc[doc.index("Outside the tree, on purpose") :]
    return {m["name"]: m["module"] for m in _OUTSIDER.finditer(section)}


CLASSES = exception_classes()


def test_exception_class_names_are_unique_across_the_packages() -> None:
    names = sorted(cls.__name__ for cls in CLASSES)
    doubles = {n for n in names if names.count(n) > 1}
    assert not doubles, f"exception classes share names: {sorted(doubles)}"


def test_the_drawing_starts_at_dispatch_error_and_names_only_real_classes() -> None:
    drawn = drawing()
    assert drawn["DispatchError"].parent is None
    known = {cls.__name__ for cls in CLASSES}
    assert set(drawn) <= known, f"drawn but not defined: {sorted(set(drawn) - known)}"
    listed = outsiders()
    assert set(listed) <= known, f"listed outside but not defined: {sorted(set(listed) - known)}"
    assert not set(drawn) & set(listed), f"both drawn and outside: {set(drawn) & set(listed)}"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: f"{cls.__module__}.{cls.__qualname__}")
def test_every_exception_class_is_drawn_under_its_parent_or_outside_on_purpose(
    cls: type[BaseException],
) -> None:
    drawn, listed = drawing(), outsiders()
    name = cls.__name__
    if name in listed:
        # Outside on purpose: then truly outside, and the list says where it lives.
        assert not issubclass(cls, errors.DispatchError), f"{name} is a DispatchError: draw it"
        assert listed[name] == cls.__module__, f"{name} is listed as in {listed[name]}"
        return
    assert name in drawn, (
        f"{cls.__module__}.{name} is neither on the tree in orders/errors.py's docstring nor "
        "listed there as outside it on purpose"
    )
    assert issubclass(cls, errors.DispatchError), f"{name} is drawn but is no DispatchError"
    node = drawn[name]
    if cls is errors.DispatchError:
        return
    bases = [base.__name__ for base in cls.__bases__]
    assert node.parent in bases, f"{name} is drawn under {node.parent}, its parents are {bases}"
    for other in bases:
        if other != node.parent:
            assert other in node.text, f"{name}'s line must name its other parent {other}"
    if cls.__module__ != "orders.errors":
        assert cls.__module__ in node.text, f"{name}'s line must name its module {cls.__module__}"


def test_the_client_keeps_the_public_name_api_error_and_the_servers_is_http_error() -> None:
    # The client's ApiError is public (and the PHP client's name too); the API's own HTTP
    # answer is another thing with another name, on the same tree but not under ApiError.
    from dispatcher.api.errors import HttpError
    from orders.client import ApiError, Unavailable

    assert issubclass(Unavailable, ApiError)
    assert issubclass(ApiError, errors.DispatchError)
    assert issubclass(HttpError, errors.DispatchError)
    assert not issubclass(HttpError, ApiError)


def test_configuration_errors_are_one_branch_that_the_command_line_catches() -> None:
    from adapters.base import InvalidSettings, NotSupported
    from dispatcher.config import ConfigError
    from dispatcher.services import ServiceError

    assert ConfigError is errors.ConfigError
    assert issubclass(InvalidSettings, ConfigError)
    assert issubclass(ServiceError, errors.PermanentError)
    # Not a permanent failure of the order: the engine counts it as a bug, as before.
    assert not issubclass(NotSupported, errors.PermanentError | errors.TransientError)
    assert issubclass(NotSupported, errors.DispatchError)
