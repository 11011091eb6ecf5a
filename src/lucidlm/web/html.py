"""Small HTML builders for the self-contained report: escaped text, tables, shaded cells, an
inline-SVG heat map, token highlights. Everything returns a string of HTML; nothing here ever
refers to a file or a URL outside the page."""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Sequence
from html import escape
from numbers import Number

# Shading colours (RGB): one hue for amounts, two for signed scores.
BLUE, GREEN, RED = (37, 99, 235), (22, 163, 74), (220, 38, 38)


def esc(value) -> str:
    return escape(str(value), quote=True)


def fmt(value, digits: int = 3) -> str:
    """Numbers rounded for people; everything else as text."""
    if isinstance(value, bool) or value is None:
        return esc(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, Number):
        return "–" if math.isnan(value) else f"{value:.{digits}f}"
    return esc(value)


def shade(share: float, rgb: tuple[int, int, int] = BLUE) -> str:
    """A CSS background for a share in [0, 1]; dark cells get white text."""
    share = 0.0 if share is None or math.isnan(share) else min(max(share, 0.0), 1.0)
    text = "color:#fff;" if share > 0.55 else ""
    return f"background:rgba({rgb[0]},{rgb[1]},{rgb[2]},{0.08 + 0.87 * share:.3f});{text}"


def table(headers: Sequence[str], rows: Iterable[Sequence], caption: str | None = None, cls: str = "") -> str:
    """A table of already-formatted cells (HTML strings); the first column is a row header."""
    head = "".join(f'<th scope="col">{esc(h)}</th>' for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f'<th scope="row">{c}</th>' if i == 0 else f"<td>{c}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    caption = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f'<table class="{esc(cls)}">{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def cell(text: str, style: str = "", title: str | None = None) -> str:
    """A cell's content wrapped so that ``table`` can shade it."""
    title = f' title="{esc(title)}"' if title else ""
    return f'<span class="cell" style="{style}"{title}>{text}</span>'


def confusion_table(matrix: Sequence[Sequence[int]], labels: Sequence[str], caption: str) -> str:
    """Gold classes as rows, predicted as columns; each cell shaded by its share of its row."""
    rows = []
    for gold, counts in zip(labels, matrix):
        total = sum(counts) or 1
        rows.append(
            [esc(gold)]
            + [cell(fmt(int(n)), shade(n / total), f"{n / total:.1%} of gold {gold}") for n in counts]
            + [fmt(int(sum(counts)))]
        )
    headers = ["gold ↓ / predicted →"] + list(labels) + ["rows"]
    return table(headers, rows, caption, "confusion")


def heatmap_svg(
    matrix: Sequence[Sequence[float]],
    rows: Sequence[str],
    columns: Sequence[str],
    title: str,
    low: float = 0.0,
    high: float = 1.0,
    cell_size: int = 46,
) -> str:
    """A matrix as an inline SVG heat map with its values written in the cells."""
    label_width = max(60, 8 * max((len(r) for r in rows), default=0))
    top = max(40, 7 * max((len(c) for c in columns), default=0))
    width, height = label_width + cell_size * len(columns) + 10, top + cell_size * len(rows) + 10
    span = (high - low) or 1.0
    parts = [
        f'<svg class="heatmap" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><title>{esc(title)}</title>'
    ]
    for j, name in enumerate(columns):
        x = label_width + cell_size * j + cell_size / 2
        parts.append(
            f'<text x="{x}" y="{top - 8}" transform="rotate(-30 {x} {top - 8})" font-size="12">{esc(name)}</text>'
        )
    for i, name in enumerate(rows):
        y = top + cell_size * i
        parts.append(
            f'<text x="{label_width - 6}" y="{y + cell_size / 2 + 4}" text-anchor="end" font-size="12">{esc(name)}</text>'
        )
        for j, value in enumerate(matrix[i]):
            share = (value - low) / span
            x = label_width + cell_size * j
            fill = f"rgba({BLUE[0]},{BLUE[1]},{BLUE[2]},{0.08 + 0.87 * min(max(share, 0), 1):.3f})"
            ink = "#fff" if share > 0.55 else "#111"
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell_size - 2}" height="{cell_size - 2}" fill="{fill}">'
                f"<title>{esc(rows[i])} × {esc(columns[j])}: {value:.3f}</title></rect>"
                f'<text x="{x + cell_size / 2 - 1}" y="{y + cell_size / 2 + 4}" text-anchor="middle" '
                f'font-size="11" fill="{ink}">{value:.2f}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def token_spans(attribution, signed: bool = True) -> str:
    """The text as its writer typed it, one box a word (``TokenAttribution.groups``: its subword
    tokens together, with their summed score), shaded by score relative to the largest magnitude:
    green with a solid line under it for positive, red with a dashed one for negative (one blue for
    unsigned scores such as attention). The end of a text the model did not read is struck through."""
    groups = attribution.groups
    top = max((abs(g.score) for g in groups), default=0.0) or 1.0
    parts = []
    for i, group in enumerate(groups):
        if group.pair and not (i and groups[i - 1].pair):
            parts.append('<span class="pair-mark"> ‖ </span>')
        sign = ("pos" if group.score >= 0 else "neg") if signed else "att"
        colour = {"pos": GREEN, "neg": RED, "att": BLUE}[sign]
        pieces = " ".join(attribution.tokens[t] for t in group.tokens)
        parts.append(
            f'{esc(group.before)}<span class="tok {sign}" style="{shade(abs(group.score) / top, colour)}" '
            f'title="{group.score:+.4f} ({esc(pieces)})">{esc(group.text)}</span>'
        )
    if attribution.unread:
        parts.append(
            f'<span class="unread" title="not read: the model reads only the first tokens">{esc(attribution.unread)}</span>'
        )
    return f'<p class="tokens">{"".join(parts)}</p>'


TOKEN_LEGEND = (
    f'<p class="legend muted"><span class="tok pos" style="{shade(0.5, GREEN)}">+ raises</span> '
    f'<span class="tok neg" style="{shade(0.5, RED)}">− lowers</span> the target named above each text '
    "(green, solid line: raises; red, dashed line: lowers; darker: stronger). One box a word, as written, "
    "its score the sum of its tokens' scores; hover a word for its score and tokens.</p>"
)


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
