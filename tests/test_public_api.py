"""Every public name of the package's API (``twostage.__all__``, and the public methods and properties of its
classes) has a docstring and type hints: the API reference is generated from them."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator
from typing import Any

import twostage

#: methods every class has from ``object`` or a dataclass/exception base, documented there
INHERITED = {"with_traceback", "add_note", "args"}


def exported() -> Iterator[tuple[str, Any]]:
    """``twostage.__all__``, and the public names the framework adapters define (where their framework is here)."""
    for name in twostage.__all__:
        yield name, getattr(twostage, name)
    for adapter in ("langchain", "llamaindex"):
        try:
            module = importlib.import_module(f"twostage.integrations.{adapter}")
        except ImportError:
            continue
        for name, obj in vars(module).items():
            if not name.startswith("_") and getattr(obj, "__module__", None) == module.__name__:
                yield f"{adapter}.{name}", obj


def public_members() -> Iterator[tuple[str, Any]]:
    """(dotted name, object) for each exported name and each public attribute its class defines itself."""
    for name, obj in exported():
        yield name, obj
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") and attr != "__init__" or attr in INHERITED:
                    continue
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if inspect.isfunction(member) or isinstance(member, property):
                    yield f"{name}.{attr}", member


def undocumented() -> list[str]:
    """Names whose docstring is missing, or is only the signature a dataclass writes in its place."""
    return [
        name
        for name, obj in public_members()
        if not name.endswith(".__init__")
        and (not (inspect.getdoc(obj) or "").strip() or (obj.__doc__ or "").startswith(f"{name.split('.')[-1]}("))
    ]


def unannotated() -> list[str]:
    """Parameters and return values without a type hint (``self``/``cls`` and a generated ``__init__`` aside)."""
    missing = []
    for name, obj in public_members():
        function = obj.fget if isinstance(obj, property) else obj
        if not inspect.isfunction(function) or function.__qualname__.endswith("__create_fn__.<locals>.__init__"):
            continue
        signature = inspect.signature(function)
        for parameter in list(signature.parameters.values()):
            if parameter.name not in ("self", "cls") and parameter.annotation is inspect.Parameter.empty:
                missing.append(f"{name}({parameter.name})")
        if signature.return_annotation is inspect.Signature.empty and not name.endswith(".__init__"):
            missing.append(f"{name} -> ?")
    return missing


def test_the_walk_sees_the_api():
    names = dict(public_members())
    assert {"Engine.search", "Engine.add", "Engine.in_memory", "rank", "Ranker.rank", "SearchResult.to_pandas"} <= set(
        names
    )
    assert {"langchain.TwostageRetriever", "llamaindex.TwostagePostprocessor"} <= set(names)


def test_every_public_name_has_a_docstring():
    assert undocumented() == []


def test_every_public_function_has_type_hints():
    assert unannotated() == []
