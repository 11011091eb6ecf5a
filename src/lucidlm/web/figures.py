"""Small inline SVG figures for the HTML report (no plotting library, nothing loaded from elsewhere):
training curves and the reliability diagram. Each scales to the width it is given (``viewBox``),
so it fits a phone as well as a desktop."""

from __future__ import annotations

from html import escape

WIDTH, HEIGHT, PAD = 360, 220, 36
AXIS, GRID, BLUE, ORANGE, GREY = "#59636e", "#d1d9e0", "#0969da", "#bc4c00", "#8c959f"


def _svg(body: str, label: str) -> str:
    return (
        f'<svg class="figure" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(label)}" '
        'font-size="10" font-family="system-ui,sans-serif">'
        f"<title>{escape(label)}</title>{body}</svg>"
    )


def _x(value: float, low: float, high: float) -> float:
    return PAD + (value - low) / ((high - low) or 1.0) * (WIDTH - 2 * PAD)


def _y(value: float, low: float, high: float) -> float:
    return HEIGHT - PAD - (value - low) / ((high - low) or 1.0) * (HEIGHT - 2 * PAD)


def _axes(x_label: str, y_label: str, x_ticks: list[tuple[float, str]], y_ticks: list[tuple[float, str]]) -> str:
    parts = [
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="{AXIS}"/>',
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{HEIGHT - PAD}" stroke="{AXIS}"/>',
    ]
    for x, text in x_ticks:
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - PAD + 12}" text-anchor="middle" fill="{AXIS}">{escape(text)}</text>'
        )
    for y, text in y_ticks:
        parts.append(
            f'<line x1="{PAD}" y1="{y:.1f}" x2="{WIDTH - PAD}" y2="{y:.1f}" stroke="{GRID}" stroke-width="0.5"/>'
            f'<text x="{PAD - 4}" y="{y + 3:.1f}" text-anchor="end" fill="{AXIS}">{escape(text)}</text>'
        )
    parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT - 6}" text-anchor="middle" fill="{AXIS}">{escape(x_label)}</text>')
    parts.append(
        f'<text x="10" y="{HEIGHT / 2}" text-anchor="middle" fill="{AXIS}" '
        f'transform="rotate(-90 10 {HEIGHT / 2})">{escape(y_label)}</text>'
    )
    return "".join(parts)


def _polyline(points: list[tuple[float, float]], colour: str) -> str:
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"/>' for x, y in points)
    return f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.8"/>{dots}'


def training_curves(history: list[dict]) -> str:
    """Training loss (left scale) and dev score (right scale) per epoch; empty without epochs."""
    epochs = [h for h in history if "epoch" in h and "loss" in h]
    if not epochs:
        return ""
    xs = [h["epoch"] for h in epochs]
    low_x, high_x = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    losses = [h["loss"] for h in epochs]
    low_l, high_l = min(0.0, min(losses)), max(losses) * 1.05 or 1.0
    body = _axes(
        "epoch",
        "training loss",
        [(_x(x, low_x, high_x), f"{x:g}") for x in xs],
        [(_y(v, low_l, high_l), f"{v:.2g}") for v in (low_l, (low_l + high_l) / 2, high_l)],
    )
    body += _polyline([(_x(x, low_x, high_x), _y(v, low_l, high_l)) for x, v in zip(xs, losses)], BLUE)
    scored = [(h["epoch"], h["dev_score"]) for h in epochs if h.get("dev_score") is not None]
    legend = f'<text x="{PAD + 6}" y="{PAD - 8}" fill="{BLUE}">● training loss</text>'
    if scored:
        scores = [s for _, s in scored]
        low_s, high_s = min(scores) - 0.02, max(scores) + 0.02
        body += _polyline([(_x(x, low_x, high_x), _y(s, low_s, high_s)) for x, s in scored], ORANGE)
        for v in (low_s, high_s):
            body += f'<text x="{WIDTH - PAD + 4}" y="{_y(v, low_s, high_s) + 3:.1f}" fill="{ORANGE}">{v:.3g}</text>'
        legend += f'<text x="{WIDTH / 2}" y="{PAD - 8}" fill="{ORANGE}">● dev score (right scale)</text>'
    return _svg(body + legend, "training loss and dev score per epoch")


def reliability_diagram(bins: list[dict], title: str = "reliability of the label's probabilities") -> str:
    """Accuracy against mean confidence per confidence bin (``calibration.reliability_bins``), each
    bin a bar from the diagonal's height to its accuracy, its width its range; the diagonal is
    a perfectly calibrated model. Empty without bins."""
    if not bins:
        return ""
    ticks = [0.0, 0.25, 0.5, 0.75, 1.0]
    body = _axes(
        "confidence (the top probability)",
        "accuracy",
        [(_x(t, 0, 1), f"{t:g}") for t in ticks],
        [(_y(t, 0, 1), f"{t:g}") for t in ticks],
    )
    body += (
        f'<line x1="{_x(0, 0, 1)}" y1="{_y(0, 0, 1)}" x2="{_x(1, 0, 1)}" y2="{_y(1, 0, 1)}" '
        f'stroke="{GREY}" stroke-dasharray="4 3"/>'
    )
    total = sum(b["n"] for b in bins) or 1
    for b in bins:
        left, right = _x(b["lower"], 0, 1) + 0.5, _x(b["upper"], 0, 1) - 0.5
        top = _y(b["accuracy"], 0, 1)
        opacity = 0.35 + 0.65 * min(1.0, 4 * b["n"] / total)  # bins with more rows are darker
        body += (
            f'<rect x="{left:.1f}" y="{top:.1f}" width="{right - left:.1f}" height="{_y(0, 0, 1) - top:.1f}" '
            f'fill="{BLUE}" fill-opacity="{opacity:.2f}"><title>{b["lower"]:.2f}–{b["upper"]:.2f}: {b["n"]} rows, '
            f"confidence {b['confidence']:.3f}, accuracy {b['accuracy']:.3f}</title></rect>"
        )
        body += f'<circle cx="{_x(b["confidence"], 0, 1):.1f}" cy="{top:.1f}" r="2.5" fill="{ORANGE}"/>'
    legend = (
        f'<text x="{PAD + 6}" y="{PAD - 8}" fill="{BLUE}">■ accuracy per bin</text>'
        f'<text x="{WIDTH / 2 + 10}" y="{PAD - 8}" fill="{ORANGE}">● its mean confidence</text>'
    )
    return _svg(body + legend, title)
