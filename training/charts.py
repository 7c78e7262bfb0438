"""Server-side SVG pictures of training curves and confusion matrices, without plotting libraries."""
from __future__ import annotations

import math
from collections.abc import Sequence

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

# Colour-blind friendly (Okabe-Ito) so curves stay distinguishable for everyone.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")


def _fmt(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        high = low + 1.0
    raw_step = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw_step)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def line_chart_svg(
    *,
    series: dict[str, Sequence[float | None]],
    title: str,
    x_label: str = "epoch",
    y_label: str = "",
    y_min: float | None = None,
    y_max: float | None = None,
    width: int = 420,
    height: int = 260,
) -> SafeString:
    """A line chart of one or more series over 1-based x positions (epochs)."""
    left, right, top, bottom = 56, 12, 28, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for points in series.values() for v in points if v is not None and math.isfinite(v)]
    length = max((len(points) for points in series.values()), default=0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="training-chart" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
        f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    if not values:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="#666">no data yet</text></svg>')
        return mark_safe("".join(parts))

    low = min(values) if y_min is None else y_min
    high = max(values) if y_max is None else y_max
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    ticks = _nice_ticks(low, high)
    low, high = min(low, ticks[0]), max(high, ticks[-1])

    def sx(index: int) -> float:
        # A single point sits in the middle rather than on the axis.
        return left + (plot_w / 2 if length <= 1 else plot_w * index / (length - 1))

    def sy(value: float) -> float:
        return top + plot_h * (1 - (value - low) / (high - low))

    for tick in ticks:
        y = sy(tick)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(tick)}</text>')
    label_every = max(1, math.ceil(length / 10))
    for index in range(0, length, label_every):
        parts.append(f'<text x="{sx(index):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{index + 1}</text>')
    parts.append(
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>'
        f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle">{escape(x_label)}</text>'
        f'<text transform="translate(14 {top + plot_h / 2}) rotate(-90)" text-anchor="middle">{escape(y_label)}</text>'
    )
    # Wide enough for the longest name at about 6 px a character (11 px sans-serif): "validation accuracy" would
    # otherwise run past the chart's right edge.
    legend_x = left + plot_w - max(110, 14 + math.ceil(6.2 * max((len(name) for name in series), default=0)))
    for number, (name, points) in enumerate(series.items()):
        colour = PALETTE[number % len(PALETTE)]
        coords = [
            (sx(i), sy(v)) for i, v in enumerate(points) if v is not None and math.isfinite(v)
        ]
        if len(coords) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in coords:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>')
        legend_y = top + 14 + 14 * number
        parts.append(
            f'<rect x="{legend_x}" y="{legend_y - 9}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{legend_x + 14}" y="{legend_y}">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))


def _luminance(rgb: Sequence[float]) -> float:
    """WCAG's relative luminance of an sRGB colour given as 0-255 channels."""
    linear = [c / 255 / 12.92 if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _legible_on(rgb: Sequence[float]) -> str:
    """Black or white, whichever contrasts more with a cell of this colour (its fill blended over white)."""
    luminance = _luminance(rgb)
    return "#fff" if 1.05 / (luminance + 0.05) > (luminance + 0.05) / 0.05 else "#000"


def confusion_matrix_svg(*, matrix: Sequence[Sequence[int]], title: str = "Confusion matrix", cell: int = 30) -> SafeString:
    """A heat map of ``matrix[true][predicted]`` counts, each row shaded relative to its own total."""
    size = len(matrix)
    left, top = 48, 44
    width, height = left + size * cell + 10, top + size * cell + 34
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="training-chart" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
        f'<text x="{width / 2}" y="14" text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}</text>',
        f'<text x="{left + size * cell / 2}" y="30" text-anchor="middle">predicted</text>',
        f'<text transform="translate(12 {top + size * cell / 2}) rotate(-90)" text-anchor="middle">true</text>',
    ]
    for j in range(size):
        parts.append(f'<text x="{left + j * cell + cell / 2}" y="{top - 3}" text-anchor="middle">{j}</text>')
    for i, row in enumerate(matrix):
        total = sum(row) or 1
        y = top + i * cell
        parts.append(f'<text x="{left - 6}" y="{y + cell / 2 + 4}" text-anchor="end">{i}</text>')
        for j, count in enumerate(row):
            share = int(count) / total
            # Correct answers in blue, mistakes in orange, so errors stand out even when small.
            rgb = (0, 114, 178) if i == j else (213, 94, 0)
            opacity = 0.08 + 0.92 * share if count else 0.0
            x = left + j * cell
            text_colour = _legible_on(tuple(opacity * c + (1 - opacity) * 255 for c in rgb))
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" stroke="#eee" '
                f'fill="rgb{rgb}" fill-opacity="{opacity:.3f}"><title>true {i}, predicted {j}: {int(count)}</title></rect>'
            )
            if count:
                font = 9 if count >= 1000 else 10
                parts.append(
                    f'<text x="{x + cell / 2}" y="{y + cell / 2 + 3}" text-anchor="middle" '
                    f'font-size="{font}" fill="{text_colour}">{int(count)}</text>'
                )
    parts.append("</svg>")
    return mark_safe("".join(parts))


def metrics_held_out(*, metrics: Sequence[dict]) -> str:
    """Which set a run's epochs were evaluated on: "validation", or "test" for runs from before the validation split."""
    return "validation" if any("validation_accuracy" in m for m in metrics) or not metrics else "test"


def run_curves_svg(*, metrics: Sequence[dict]) -> dict[str, SafeString]:
    """Loss and accuracy curves from a run's per-epoch metrics list: training against the held-out set."""

    def column(key: str) -> list[float | None]:
        return [m.get(key) for m in metrics]

    held_out = metrics_held_out(metrics=metrics)
    return {
        "loss": line_chart_svg(
            series={"train loss": column("train_loss"), f"{held_out} loss": column(f"{held_out}_loss")},
            title="Loss",
            y_label="loss",
        ),
        "accuracy": line_chart_svg(
            series={"train accuracy": column("train_accuracy"), f"{held_out} accuracy": column(f"{held_out}_accuracy")},
            title="Accuracy",
            y_label="accuracy",
        ),
    }
