"""Cross-budget Pareto front of tuning trials: FLOPs ratio (minimise) against accuracy (maximise).

A trial is a `Point`: FLOPs ratio in (0, 1] (pruned / vanilla prefill FLOPs) and accuracy in [0, 1]. This module
finds the non-dominated points, their hypervolume against a reference corner, a table of the front, and two plots:
a PNG (matplotlib, Agg) and one self-contained offline HTML file (inline SVG with per-point tooltips and a
click-to-sort table). Non-finite points (nan/inf coordinates) are ignored by the front, the hypervolume and drawing.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

X_LABEL = "FLOPs ratio (pruned / vanilla prefill)"
Y_LABEL = "accuracy"
# matplotlib's tab10, so the PNG and the HTML colour budgets alike.
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
_NO_BUDGET = "#7f7f7f"
_REF_COLOUR = "#111111"


@dataclass(frozen=True)
class Point:
    """One evaluated configuration.

    flops_ratio: pruned / vanilla prefill FLOPs, in (0, 1]. accuracy: in [0, 1]. label: display name
    (e.g. "b0.30 #12"). budget: FLOPs budget of the study the point came from. trial: Optuna trial number.
    params: thresholds, shown in tooltips and tables (ignored by equality and hashing).
    """

    flops_ratio: float
    accuracy: float
    label: str = ""
    budget: float | None = None
    trial: int | None = None
    params: dict | None = field(default=None, compare=False, hash=False)


# --------------------------------------------------------------------------------------------------------- front


def _is_finite(point: Point) -> bool:
    return math.isfinite(point.flops_ratio) and math.isfinite(point.accuracy)


def _finite(points: Sequence[Point]) -> list[Point]:
    return [p for p in points if _is_finite(p)]


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """Non-dominated points, sorted by FLOPs ratio ascending (hence accuracy strictly ascending too).

    a dominates b when a.flops_ratio <= b.flops_ratio and a.accuracy >= b.accuracy with one strict. Of exact
    duplicates (same FLOPs ratio and accuracy) the first given is kept.
    """
    ordered = sorted(enumerate(_finite(points)), key=lambda ip: (ip[1].flops_ratio, -ip[1].accuracy, ip[0]))
    front: list[Point] = []
    for _, point in ordered:
        if not front or point.accuracy > front[-1].accuracy:
            front.append(point)
    return front


def hypervolume(points: Sequence[Point], reference: tuple[float, float] = (1.0, 0.0)) -> float:
    """Area (FLOPs-ratio units x accuracy units) dominated by the points inside the reference box.

    The box is flops_ratio <= reference[0] and accuracy >= reference[1]; points outside it contribute nothing.
    One point (0.3, 0.9) with reference (1, 0) gives 0.7 * 0.9 = 0.63. Empty -> 0.0.
    """
    ref_flops, ref_acc = reference
    inside = [p for p in _finite(points) if p.flops_ratio <= ref_flops and p.accuracy >= ref_acc]
    front = pareto_front(inside)
    if not front:
        return 0.0
    flops = np.array([p.flops_ratio for p in front] + [ref_flops])
    height = np.array([p.accuracy for p in front]) - ref_acc
    return float(np.sum(np.diff(flops) * height))


def front_table(points: Sequence[Point]) -> list[dict]:
    """Rows of the Pareto front (FLOPs ascending) for printing or CSV.

    Each row: {"budget", "trial", "flops_ratio", "accuracy", "label", **params}; a param never overwrites those keys.
    """
    return [_row(p) for p in pareto_front(points)]


def _row(point: Point) -> dict:
    row = {
        "budget": point.budget,
        "trial": point.trial,
        "flops_ratio": point.flops_ratio,
        "accuracy": point.accuracy,
        "label": point.label,
    }
    for key, value in (point.params or {}).items():
        row.setdefault(key, value)
    return row


# ------------------------------------------------------------------------------------------------ plot helpers


def _finite_refs(references: Mapping[str, Point] | None) -> dict[str, Point]:
    return {name: p for name, p in (references or {}).items() if _is_finite(p)}


def _budget_colours(points: Sequence[Point]) -> dict[float | None, str]:
    """Colour per budget present (sorted ascending, tab10 order); points without a budget are grey."""
    budgets = sorted({p.budget for p in points if p.budget is not None})
    colours: dict[float | None, str] = {b: _PALETTE[i % len(_PALETTE)] for i, b in enumerate(budgets)}
    colours[None] = _NO_BUDGET
    return colours


def _budget_name(budget: float | None) -> str:
    return "no budget" if budget is None else f"b{budget:.2f}"


def _limits(points: Sequence[Point]) -> tuple[tuple[float, float], tuple[float, float]]:
    """Axis ranges: FLOPs ratio from 0 to max(1, data), accuracy the data's range padded by 0.05 within [0, 1]."""
    xs = [p.flops_ratio for p in points] or [1.0]
    ys = [p.accuracy for p in points] or [0.0, 1.0]
    x_hi = max(1.0, max(xs)) * 1.02
    y_lo = min(max(0.0, min(ys) - 0.05), min(ys))
    y_hi = max(min(1.0, max(ys) + 0.05), max(ys))
    if y_hi - y_lo < 1e-9:  # a single accuracy outside [0, 1]
        y_lo, y_hi = y_lo - 0.05, y_hi + 0.05
    return (0.0, x_hi), (y_lo, y_hi)


def _step_vertices(front: Sequence[Point]) -> list[tuple[float, float]]:
    """Staircase through the front: along each point's accuracy until the next point's FLOPs ratio, then up."""
    vertices: list[tuple[float, float]] = []
    for i, p in enumerate(front):
        vertices.append((p.flops_ratio, p.accuracy))
        if i + 1 < len(front):
            vertices.append((front[i + 1].flops_ratio, p.accuracy))
    return vertices


def _fmt(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float | np.floating):
        return f"{float(value):.4g}"
    return str(value)


def _tooltip(point: Point) -> str:
    lines = [point.label or "(unlabelled)", f"FLOPs ratio {point.flops_ratio:.4f}", f"accuracy {point.accuracy:.4f}"]
    if point.budget is not None:
        lines.append(f"budget {point.budget:.2f}")
    if point.trial is not None:
        lines.append(f"trial {point.trial}")
    lines += [f"{k} = {_fmt(v)}" for k, v in (point.params or {}).items()]
    return "\n".join(lines)


def _ensure_parent(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------------------------------------- PNG


def plot_png(
    points: Sequence[Point], path: str | Path, title: str = "", references: Mapping[str, Point] | None = None
) -> Path:
    """Scatter of all points (coloured by budget), the front as a step line, labelled reference points, dashed
    vertical lines at the budgets present; saved as a PNG at 120 dpi. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = _ensure_parent(path)
    pts, refs = _finite(points), _finite_refs(references)
    colours = _budget_colours(pts)
    front = pareto_front(pts)
    (x0, x1), (y0, y1) = _limits(pts + _finite(list(refs.values())))

    fig, ax = plt.subplots(figsize=(8, 5.5))
    try:
        for budget in sorted({p.budget for p in pts if p.budget is not None}):
            ax.axvline(budget, color=colours[budget], linestyle="--", linewidth=0.9, alpha=0.6)
        for budget in dict.fromkeys(p.budget for p in pts):
            group = [p for p in pts if p.budget == budget]
            xs, ys = [p.flops_ratio for p in group], [p.accuracy for p in group]
            ax.scatter(xs, ys, s=18, color=colours[budget], alpha=0.7, label=_budget_name(budget))
        if front:
            sx, sy = zip(*_step_vertices(front), strict=True)
            ax.plot(sx, sy, color="black", linewidth=1.4, label="Pareto front")
            xs, ys = [p.flops_ratio for p in front], [p.accuracy for p in front]
            ax.scatter(xs, ys, s=40, facecolors="none", edgecolors="black", linewidths=1.2, zorder=4)
        for name, ref in refs.items():
            ax.scatter([ref.flops_ratio], [ref.accuracy], marker="D", s=45, color=_REF_COLOUR, zorder=5)
            ax.annotate(name, (ref.flops_ratio, ref.accuracy), xytext=(6, 6), textcoords="offset points", fontsize=8)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_xlabel(X_LABEL)
        ax.set_ylabel(Y_LABEL)
        if title:
            ax.set_title(title)
        ax.grid(alpha=0.3)
        if pts:
            ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------------ HTML

_W, _H = 760, 500
_ML, _MR, _MT, _MB = 70, 170, 40, 60  # margins; the right one holds the legend

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
svg text { font-size: 12px; }
table { border-collapse: collapse; margin-top: 1em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; cursor: pointer; user-select: none; }
th[data-dir="asc"]::after { content: " \\25B2"; }
th[data-dir="desc"]::after { content: " \\25BC"; }
tr.front td { background: #fff4c2; font-weight: 600; }
td.text { text-align: left; }
circle:hover { stroke: #000; stroke-width: 2; }
"""

_JS = """
document.querySelectorAll("table.sortable th").forEach((th, col) => {
  th.addEventListener("click", () => {
    const body = th.closest("table").tBodies[0];
    const dir = th.dataset.dir === "asc" ? -1 : 1;
    th.parentNode.querySelectorAll("th").forEach((h) => delete h.dataset.dir);
    th.dataset.dir = dir === 1 ? "asc" : "desc";
    const key = (row) => {
      const t = row.cells[col].textContent.trim();
      return t === "" ? null : (Number.isNaN(Number(t)) ? t : Number(t));
    };
    const rows = Array.from(body.rows);
    rows.sort((a, b) => {
      const x = key(a), y = key(b);
      if (x === null || y === null) return (x === null) - (y === null);
      if (typeof x === "number" && typeof y === "number") return dir * (x - y);
      return dir * String(x).localeCompare(String(y));
    });
    rows.forEach((r) => body.appendChild(r));
  });
});
"""


def _nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 x 10^k) covering [lo, hi]."""
    raw = (hi - lo) / max(target - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(v, 10) for v in np.arange(first, hi + step * 1e-9, step)]


def _svg(points: list[Point], front: list[Point], refs: dict[str, Point], title: str) -> str:
    esc = html.escape
    colours = _budget_colours(points)
    (x0, x1), (y0, y1) = _limits(points + _finite(list(refs.values())))
    pw, ph = _W - _ML - _MR, _H - _MT - _MB

    def sx(x: float) -> float:
        return round(_ML + (x - x0) / (x1 - x0) * pw, 2)

    def sy(y: float) -> float:
        return round(_MT + (y1 - y) / (y1 - y0) * ph, 2)

    out = [f'<svg width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" role="img">']
    out.append(f'<rect x="{_ML}" y="{_MT}" width="{pw}" height="{ph}" fill="#fff" stroke="#999"/>')
    for t in _nice_ticks(x0, x1):
        out.append(f'<line x1="{sx(t)}" y1="{_MT}" x2="{sx(t)}" y2="{_MT + ph}" stroke="#eee"/>')
        out.append(f'<text x="{sx(t)}" y="{_MT + ph + 16}" text-anchor="middle">{t:g}</text>')
    for t in _nice_ticks(y0, y1):
        out.append(f'<line x1="{_ML}" y1="{sy(t)}" x2="{_ML + pw}" y2="{sy(t)}" stroke="#eee"/>')
        out.append(f'<text x="{_ML - 6}" y="{sy(t) + 4}" text-anchor="end">{t:g}</text>')
    out.append(f'<text x="{_ML + pw / 2}" y="{_H - 16}" text-anchor="middle">{esc(X_LABEL)}</text>')
    out.append(
        f'<text x="16" y="{_MT + ph / 2}" text-anchor="middle" transform="rotate(-90 16 {_MT + ph / 2})">'
        f"{esc(Y_LABEL)}</text>"
    )
    if title:
        out.append(f'<text x="{_ML + pw / 2}" y="24" text-anchor="middle" font-weight="bold">{esc(title)}</text>')
    budgets = sorted({p.budget for p in points if p.budget is not None})
    for b in budgets:
        out.append(
            f'<line x1="{sx(b)}" y1="{_MT}" x2="{sx(b)}" y2="{_MT + ph}" stroke="{colours[b]}" '
            'stroke-dasharray="5 4" opacity="0.7"/>'
        )
    if front:
        coords = " ".join(f"{sx(x)},{sy(y)}" for x, y in _step_vertices(front))
        out.append(f'<polyline points="{coords}" fill="none" stroke="#000" stroke-width="1.5"/>')
    on_front = {id(p) for p in front}
    for p in points:
        big = id(p) in on_front
        stroke = ' stroke="#000" stroke-width="1.3"' if big else ""
        out.append(
            f'<circle cx="{sx(p.flops_ratio)}" cy="{sy(p.accuracy)}" r="{5 if big else 3.5}" '
            f'fill="{colours[p.budget]}" fill-opacity="0.8"{stroke}><title>{esc(_tooltip(p))}</title></circle>'
        )
    for name, ref in refs.items():
        x, y = sx(ref.flops_ratio), sy(ref.accuracy)
        tip = esc(_tooltip(replace(ref, label=name if not ref.label else f"{name}: {ref.label}")))
        out.append(
            f'<path d="M{x} {y - 6} L{x + 6} {y} L{x} {y + 6} L{x - 6} {y} Z" fill="{_REF_COLOUR}">'
            f"<title>{tip}</title></path>"
        )
        out.append(f'<text x="{x + 8}" y="{y - 8}">{esc(name)}</text>')
    legend = [(colours[b], _budget_name(b)) for b in dict.fromkeys(p.budget for p in points)]
    lx, ly = _ML + pw + 16, _MT + 10
    for i, (colour, name) in enumerate(legend):
        out.append(f'<circle cx="{lx}" cy="{ly + 18 * i}" r="4" fill="{colour}"/>')
        out.append(f'<text x="{lx + 10}" y="{ly + 18 * i + 4}">{esc(name)}</text>')
    if front:
        yy = ly + 18 * len(legend)
        out.append(f'<line x1="{lx - 6}" y1="{yy}" x2="{lx + 6}" y2="{yy}" stroke="#000" stroke-width="1.5"/>')
        out.append(f'<text x="{lx + 10}" y="{yy + 4}">Pareto front</text>')
    out.append("</svg>")
    return "\n".join(out)


def _table(points: Sequence[Point], front: list[Point]) -> str:
    esc = html.escape
    on_front = {id(p) for p in front}
    base = ["front", "budget", "trial", "flops_ratio", "accuracy", "label"]
    extra = list(dict.fromkeys(k for p in points for k in (p.params or {}) if k not in base))
    head = "".join(f"<th>{esc(str(c))}</th>" for c in base + extra)
    rows = []
    for p in points:
        row = _row(p)
        cells = ["&#9733;" if id(p) in on_front else ""]
        cells += [esc(_fmt(row.get(c))) for c in base[1:] + extra]
        tds = "".join(
            f'<td class="text">{c}</td>' if name == "label" else f"<td>{c}</td>"
            for name, c in zip(base + extra, cells, strict=True)
        )
        rows.append(f'<tr class="front">{tds}</tr>' if id(p) in on_front else f"<tr>{tds}</tr>")
    body = "\n".join(rows)
    return f'<table class="sortable">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>'


def plot_html(
    points: Sequence[Point], path: str | Path, title: str = "", references: Mapping[str, Point] | None = None
) -> Path:
    """One self-contained, offline HTML file: an inline SVG of the same content as `plot_png` (each point and
    reference has a hover tooltip with label, FLOPs ratio, accuracy and params) above a table of all points that
    sorts on a header click (front rows highlighted). No external scripts, styles or fonts. Returns the path."""
    path = _ensure_parent(path)
    drawn, refs = _finite(points), _finite_refs(references)
    front = pareto_front(drawn)
    heading = html.escape(title or "Pareto front")
    summary = (
        f"{len(points)} points, {len(front)} on the front, hypervolume (ref 1, 0) = {hypervolume(drawn):.4f}. "
        "Hover a point for details; click a column header to sort."
    )
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{heading}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{heading}</h1>
<p>{html.escape(summary)}</p>
{_svg(drawn, front, refs, title)}
{_table(points, front)}
<script>{_JS}</script>
</body>
</html>
"""
    path.write_text(page, encoding="utf-8")
    return path
