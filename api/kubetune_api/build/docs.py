"""docs/api.md, generated from the same models and schema as the CRD: one section per object,
every field with its type, constraints, default and description, and the examples that use it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from kubetune_api.v1alpha1 import (
    API_GROUP,
    API_VERSION,
    KIND,
    MAX_NAME_LENGTH,
    FineTuneJob,
    FineTuneJobSpec,
    FineTuneJobStatus,
    FineTuneSchedule,
    FineTuneScheduleSpec,
    FineTuneScheduleStatus,
)

from .crd import (
    CATEGORIES,
    PRINTER_COLUMNS,
    REPO_ROOT,
    SCHEDULE_CRD_PATHS,
    SCHEDULE_PRINTER_COLUMNS,
    SCHEDULE_SHORT_NAMES,
    SELECTABLE_FIELDS,
    SHORT_NAMES,
    Schema,
    clean_text,
    json_schema,
    structural,
)

DOCS_PATH = Path("docs/api.md")


def _anchor(name: str) -> str:
    return name.lower()


def _md(text: str) -> str:
    return clean_text(text).replace("|", "\\|").replace("\n\n", "<br><br>")


def _type_md(node: Schema, defs: dict[str, Schema]) -> str:
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        target = defs[name]
        if "enum" in target:
            return " \\| ".join(f"`{v}`" for v in target["enum"])
        return f"[{name}](#{_anchor(name)})"
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b != {"type": "null"}]
        return " \\| ".join(_type_md(b, defs) for b in branches)
    if node.get("x-kubernetes-int-or-string"):
        return "quantity (string or integer)"
    if "const" in node:
        return f"`{node['const']}`"
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    kind = node.get("type")
    if kind == "array":
        return f"list of {_type_md(node.get('items', {}), defs)}"
    if kind == "object":
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            return f"map of string to {_type_md(extra, defs)}"
        return "object (free-form)"
    return str(kind or "any")


# Bound keywords of a schema node, in the order the docs list them, as "<prefix> <op> <value>".
_BOUNDS = (
    ("minimum", ""),
    ("maximum", ""),
    ("minLength", "length "),
    ("maxLength", "length "),
    ("minItems", "items "),
    ("maxItems", "items "),
)


def _bound_op(node: Schema, key: str) -> str:
    if key == "minimum":
        return ">" if node.get("exclusiveMinimum") else "≥"
    if key == "maximum":
        return "<" if node.get("exclusiveMaximum") else "≤"
    return "≥" if key.startswith("min") else "≤"


def _constraints_md(node: Schema) -> str:
    """Constraints of a structural schema node, in words."""
    out = [f"{prefix}{_bound_op(node, key)} {node[key]}" for key, prefix in _BOUNDS if key in node]
    if node.get("x-kubernetes-list-type") == "set":
        out.append("unique items")
    if "pattern" in node:
        out.append(f"pattern `{node['pattern']}`")
    items = node.get("items")
    if isinstance(items, dict) and items.get("type") != "object":
        inner = _constraints_md(items)
        if inner:
            out.append(f"each item: {inner}")
    return "; ".join(out).replace("|", "\\|")


def _default_md(node: Schema) -> str:
    if "default" not in node or node["default"] is None:
        return ""
    value = node["default"]
    if value == {}:
        return "`{}` (nested defaults)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    return f"`{value}`"


def _object_section(name: str, node: Schema, defs: dict[str, Schema], title: str) -> list[str]:
    lines = [f"### {title}", ""]
    if node.get("description"):
        lines += [clean_text(node["description"]), ""]
    required = set(node.get("required", []))
    lines += ["| Field | Type | Default | Constraints | Description |", "|---|---|---|---|---|"]
    for field, prop in node.get("properties", {}).items():
        req = " (required)" if field in required else ""
        conv = structural(prop, defs)
        lines.append(
            f"| `{field}`{req} | {_type_md(prop, defs)} | {_default_md(conv)} | "
            f"{_constraints_md(conv)} | {_md(conv.get('description', ''))} |"
        )
    rules = node.get("x-kubernetes-validations", [])
    if rules:
        lines += ["", "Validation rules (CEL, enforced by the API server):", ""]
        for rule in rules:
            where = f" (`{rule['fieldPath'].lstrip('.')}`)" if rule.get("fieldPath") else ""
            lines.append(f"- {rule['message']}{where}: `{rule['rule']}`")
    return [*lines, ""]


def _reachable(start: Schema, defs: dict[str, Schema]) -> list[str]:
    """Object definitions reachable from `start`, in first-use order."""
    seen: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                name = ref.rsplit("/", 1)[-1]
                if name not in seen and "properties" in defs[name]:
                    seen.append(name)
                    walk(defs[name])
            for key, value in node.items():
                if key != "$ref":
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(start)
    return seen


def _examples_md(root: Path = REPO_ROOT) -> list[str]:
    """A list of examples/*.yaml with the first line of each one's leading comment."""
    lines = ["## Examples", "", "| File | What it shows |", "|---|---|"]
    for path in sorted((root / "examples").glob("*.yaml")):
        paragraph = []
        for line in path.read_text().splitlines():
            text = line.lstrip("#").strip()
            if not line.startswith("#") or not text:
                break
            paragraph.append(text)
        first = re.split(r"(?<=\.)\s", " ".join(paragraph), maxsplit=1)[0]
        lines.append(f"| [`examples/{path.name}`](../examples/{path.name}) | {_md(first)} |")
    return [*lines, ""]


def render_docs() -> str:
    raw = json_schema(FineTuneJob)
    defs = raw["$defs"]
    spec_names = _reachable(defs[FineTuneJobSpec.__name__], defs)
    status_names = [
        n for n in _reachable(defs[FineTuneJobStatus.__name__], defs) if n not in spec_names
    ]
    out = [
        "<!-- Code generated by `python -m kubetune_api.build --write` (make crds) from the",
        "     models in api/kubetune_api/v1alpha1/. DO NOT EDIT: change the models and regenerate. -->",
        "",
        f"# `{KIND}` API reference (`{API_GROUP}/{API_VERSION}`)",
        "",
        clean_text(raw.get("description", "")),
        "",
        f"Short name `{SHORT_NAMES[0]}`, category `{CATEGORIES[0]}` (`kubectl get kubetune`). "
        "Every field below is also available from `kubectl explain finetunejob.spec.<field>`. "
        "The CRD is `crds/kubetune.io_finetunejobs.yaml`; examples are in `examples/`.",
        "",
        "## Conventions",
        "",
        "- Field names are camelCase; unknown fields are refused (`kubectl apply` validates "
        "strictly by default).",
        "- An optional field that is absent, or set to `null`, is unset and takes its default. "
        "Object-valued fields default to `{}`, so their nested defaults apply and show up in "
        "`kubectl get -o yaml`.",
        '- Quote YAML 1.1 booleans used as strings: write `evalStrategy: "no"`, not '
        "`evalStrategy: no` (which YAML reads as `false`).",
        "- Resource quantities (`cpu`, `memory`, ...) are strings like `500m`, `16Gi` or "
        "integers like `8`, as in a pod spec.",
        "- Cross-field rules are CEL rules in the CRD, so `kubectl apply` refuses a bad "
        "manifest with a message naming the field; the operator and trainer apply the same "
        "rules (pydantic) to what they read.",
        f"- `metadata.name` is at most {MAX_NAME_LENGTH} characters: each run is a "
        "batch/v1 Job named `<name>-run-<n>`.",
        "- `spec.task` and `spec.output.uri` are immutable.",
        "",
        "## `kubectl get ftj` columns",
        "",
        *_columns_md(PRINTER_COLUMNS),
        "",
        "Field selectors: "
        + ", ".join(f"`{f['jsonPath'].lstrip('.')}`" for f in SELECTABLE_FIELDS)
        + " (e.g. `kubectl get ftj --field-selector spec.method.type=qlora`).",
        "",
        *_examples_md(),
        "## Spec",
        "",
    ]
    out += _object_section(
        FineTuneJobSpec.__name__, defs[FineTuneJobSpec.__name__], defs, "FineTuneJobSpec (`spec`)"
    )
    for name in spec_names:
        out += _object_section(name, defs[name], defs, name)
    out += ["## Status", ""]
    out += _object_section(
        FineTuneJobStatus.__name__,
        defs[FineTuneJobStatus.__name__],
        defs,
        "FineTuneJobStatus (`status`)",
    )
    for name in status_names:
        out += _object_section(name, defs[name], defs, name)
    out += _schedule_md({*spec_names, *status_names, FineTuneJobSpec.__name__})
    return "\n".join(out).rstrip("\n") + "\n"


def _columns_md(columns: list[Schema]) -> list[str]:
    """The `kubectl get` columns as a markdown table (`-o wide` ones marked)."""
    out = ["| Column | JSONPath | Description |", "|---|---|---|"]
    for col in columns:
        wide = " (`-o wide`)" if col.get("priority") else ""
        out.append(
            f"| {col['name']}{wide} | `{col['jsonPath']}` | {col.get('description', 'Age.')} |"
        )
    return out


def _schedule_md(documented: set[str]) -> list[str]:
    """The FineTuneSchedule resource: its own objects; those it shares with FineTuneJob (the
    template's spec, Condition) are linked above."""
    raw = json_schema(FineTuneSchedule)
    defs = raw["$defs"]
    out = [
        f"# `{FineTuneSchedule.model_fields['kind'].default}` API reference "
        f"(`{API_GROUP}/{API_VERSION}`)",
        "",
        clean_text(raw.get("description", "")),
        "",
        f"Short name `{SCHEDULE_SHORT_NAMES[0]}`, category `{CATEGORIES[0]}`. The CRD is "
        f"`{SCHEDULE_CRD_PATHS[0]}`. `spec.template.spec` is a whole "
        "[FineTuneJobSpec](#finetunejobspec-spec), with the same rules. How it decides: "
        'docs/lifecycle.md, "Retraining on a schedule".',
        "",
        "## `kubectl get fts` columns",
        "",
        *_columns_md(SCHEDULE_PRINTER_COLUMNS),
        "",
        "## Schedule spec",
        "",
    ]
    spec_name, status_name = FineTuneScheduleSpec.__name__, FineTuneScheduleStatus.__name__
    out += _object_section(spec_name, defs[spec_name], defs, f"{spec_name} (`spec`)")
    for name in _reachable(defs[spec_name], defs):
        if name not in documented:
            documented.add(name)
            out += _object_section(name, defs[name], defs, name)
    out += ["## Schedule status", ""]
    out += _object_section(status_name, defs[status_name], defs, f"{status_name} (`status`)")
    for name in _reachable(defs[status_name], defs):
        if name not in documented:
            documented.add(name)
            out += _object_section(name, defs[name], defs, name)
    return out
