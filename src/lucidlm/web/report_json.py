"""Any JSON value as HTML tables, for results whose shape the report does not know in advance
(the evaluation suite's ``evaluation.json``): scalars in key/value tables, a mapping of small
mappings as one matrix (nested keys joined with dots into its columns), lists of numbers inline,
deeper levels as nested headings."""

from __future__ import annotations

from .html import esc, fmt, table

MAX_LIST = 40  # numbers shown inline before the rest is summarised
MAX_COLUMNS = 12  # a row of more nested values is shown as nested headings instead


def is_scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def is_flat(value) -> bool:
    """A mapping that makes one table row: scalar (or list-of-scalar) leaves, nested or not, and
    not too many of them."""
    if not isinstance(value, dict):
        return False
    leaves = flatten(value)
    return len(leaves) <= MAX_COLUMNS and all(is_scalar(v) or is_scalar_list(v) for v in leaves.values())


def flatten(value: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists and scalars are leaves."""
    out = {}
    for key, child in value.items():
        name = f"{prefix}{key}"
        if isinstance(child, dict) and child:
            out.update(flatten(child, name + "."))
        else:
            out[name] = child
    return out


def is_scalar_list(value) -> bool:
    return isinstance(value, list) and all(is_scalar(v) for v in value)


def inline(value) -> str:
    if is_scalar_list(value):
        shown = ", ".join(fmt(v) for v in value[:MAX_LIST])
        return f"[{shown}{f', … ({len(value)} in all)' if len(value) > MAX_LIST else ''}]"
    return fmt(value)


def render_json(value, depth: int = 0) -> str:
    if is_scalar(value) or is_scalar_list(value):
        return f"<p>{inline(value)}</p>"
    if isinstance(value, list):
        if value and all(is_flat(v) for v in value):
            rows = [flatten(v) for v in value]
            columns = list(dict.fromkeys(k for v in rows for k in v))
            return table(
                ["#"] + columns, [[str(i)] + [inline(v.get(c, "")) for c in columns] for i, v in enumerate(rows, 1)]
            )
        return "<ol>" + "".join(f"<li>{render_json(v, depth + 1)}</li>" for v in value) + "</ol>"
    if not isinstance(value, dict):
        return f"<p>{esc(value)}</p>"
    scalars = {k: v for k, v in value.items() if is_scalar(v) or is_scalar_list(v)}
    nested = {k: v for k, v in value.items() if k not in scalars}
    parts = []
    if scalars:
        parts.append(table(["", "value"], [[esc(k), inline(v)] for k, v in scalars.items()], cls="kv"))
    if nested and all(is_flat(v) for v in nested.values()):
        rows = {k: flatten(v) for k, v in nested.items()}
        columns = list(dict.fromkeys(k for v in rows.values() for k in v))
        parts.append(
            table([""] + columns, [[esc(k)] + [inline(v.get(c, "")) for c in columns] for k, v in rows.items()])
        )
        return "".join(parts)
    level = min(3 + depth, 6)
    for key, child in nested.items():
        parts.append(f"<h{level}>{esc(key)}</h{level}>{render_json(child, depth + 1)}")
    return "".join(parts)
