"""The CRD's CEL rules, evaluated in Python: each cross-field rule is written once, as the
`cel(...)` entry the CRD carries in `x-kubernetes-validations`, and the models run that same
rule text on their own wire form (camelCase, unset fields absent) after pydantic's field
checks. The API server and the models therefore refuse the same manifests with the same
message; tests/integration/test_api_agreement.py holds them to it.

The evaluator is `common-expression-language` (Python bindings of the Rust `cel` crate):
docs/design.md says why it and not cel-python. Rules that read `oldSelf` are transition rules
(immutable fields); only the API server, which has the stored object, checks them.
"""

from __future__ import annotations

import functools
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

_PATH = re.compile(r"\bself((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


@functools.cache
def _cel() -> Any:
    """The `cel` module, imported on first use: its package imports its REPL (typer, rich,
    prompt-toolkit) too, ~0.5 s that `import kubetune_api` should not pay up front."""
    import cel

    return cel


@dataclass(frozen=True)
class Rule:
    text: str
    message: str
    field_path: str  # ".a.b" relative to the model, or ""
    program: Any  # a compiled cel.Program


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside `X`, `X | None` or `Annotated[X, ...]`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated or origin is typing.Union or origin is types.UnionType:
        for arg in typing.get_args(annotation):
            found = _nested_model(arg)
            if found is not None:
                return found
    return None


def _include(model: type[BaseModel], chains: list[list[str]]) -> dict[str, Any]:
    """The `model_dump(include=...)` tree of the fields the rules read: `self.dataset.format`
    includes dataset.format and not the dataset's inline rows. A chain stops where it leaves
    the model's fields (`self.labelNames.size()`) and includes the whole value there."""
    by_alias = {f.alias or name: name for name, f in model.model_fields.items()}
    tree: dict[str, Any] = {}
    for chain in chains:
        if not chain or chain[0] not in by_alias:
            continue
        name = by_alias[chain[0]]
        sub = _nested_model(model.model_fields[name].annotation)
        if (
            sub is None
            or len(chain) == 1
            or chain[1] not in {f.alias or n for n, f in sub.model_fields.items()}
        ):
            tree[name] = True
        elif tree.get(name) is not True:
            below = _include(sub, [chain[1:]])
            current = tree.setdefault(name, {})
            for key, value in below.items():
                if current.get(key) is not True:
                    current[key] = value
    return tree


@functools.cache
def rules_of(model: type[BaseModel]) -> tuple[tuple[Rule, ...], dict[str, Any] | None]:
    """The model's own CEL rules (those in its model_config), compiled, and the include tree
    of what they read (None: the whole object)."""
    extra = model.model_config.get("json_schema_extra")
    raw: Any = extra.get("x-kubernetes-validations", []) if isinstance(extra, dict) else []
    rules: list[Rule] = []
    chains: list[list[str]] = []
    whole = False
    for r in raw:
        text, message = str(r["rule"]), str(r["message"])
        if "oldSelf" in text:
            continue
        field_path = str(r.get("fieldPath", ""))
        rules.append(Rule(text, message, field_path, _cel().compile(text)))
        found = [m.group(1).split(".")[1:] for m in _PATH.finditer(text)]
        whole = whole or len(found) < len(re.findall(r"\bself\b", text))
        chains += found
    return tuple(rules), None if whole else _include(model, chains)


def failures(obj: BaseModel, where: str) -> list[str]:
    """`<where><fieldPath>: <message>` for every rule of `obj`'s model that does not hold.
    `where` is where the model sits in a FineTuneJob (e.g. `spec.method`), or "" for models
    used at several places (the path is then relative to the model)."""
    rules, include = rules_of(type(obj))
    if not rules:
        return []
    wire = obj.model_dump(by_alias=True, exclude_none=True, mode="json", include=include)
    # One Context per object: execute() with a plain dict builds a fresh one per rule, ~10x
    # slower (190 us against 16 us a rule, measured).
    context = _cel().Context()
    context.add_variable("self", wire)
    out = []
    for rule in rules:
        try:
            ok = rule.program.execute(context) is True
        except (RuntimeError, ValueError, TypeError, OverflowError):
            ok = False  # the API server refuses an object a rule cannot evaluate on, too
        if not ok:
            path = f"{where}{rule.field_path}".lstrip(".") or where
            out.append(f"{path}: {rule.message}" if path else rule.message)
    return out
