"""Cross-budget Pareto front of tuning trials: FLOPs ratio (minimise) against accuracy (maximise).

A trial is a `Point`: FLOPs ratio in (0, 1] (pruned / vanilla prefill FLOPs) and accuracy in [0, 1] on the tune
split. This module finds the non-dominated points, their hypervolume against a reference corner, a table of the
front, and two plots: a PNG (matplotlib, Agg) and one self-contained offline HTML file (inline SVG with tooltips and
click-to-sort tables). Both can carry the held-out evaluation of each budget's selected config (`HeldOut`: test
accuracy with its 95% CI, the default config and the unpruned model on the same test questions). Trials that land
on the same coordinates are drawn once, and their tooltip lists them all. Non-finite points (nan/inf coordinates)
are ignored by the front, the hypervolume and drawing.
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


@dataclass(frozen=True)
class HeldOut:
    """One budget's selected config evaluated once on the test split (what `autotune export` writes in a preset).

    flops_ratio: achieved on the test split. accuracy / ci95: the selected config's test accuracy and its 95%
    bootstrap CI. default_accuracy / vanilla_accuracy: the default config at the same retention (same FLOPs ratio)
    and the unpruned model (FLOPs ratio 1) on the same test questions. tune_accuracy: what it scored on the tune
    split. preset: the preset's path. params: the selected thresholds (ignored by equality and hashing).
    """

    budget: float
    trial: int
    flops_ratio: float
    accuracy: float
    ci95: tuple[float, float]
    default_accuracy: float | None = None
    vanilla_accuracy: float | None = None
    tune_accuracy: float | None = None
    preset: str = ""
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

SELECTED_TEST = "selected config, test split (95% CI)"
DEFAULT_TEST = "default config, test split"
VANILLA_TEST = "vanilla (no pruning), test split"
_TIE_LIST = 12  # a tooltip names at most this many tied trials, then counts the rest


def _finite_refs(references: Mapping[str, Point] | None) -> dict[str, Point]:
    return {name: p for name, p in (references or {}).items() if _is_finite(p)}


def _finite_held(held_out: Sequence[HeldOut] | None) -> list[HeldOut]:
    return [h for h in held_out or () if math.isfinite(h.flops_ratio) and math.isfinite(h.accuracy)]


def _budget_colours(points: Sequence[Point], extra: Sequence[float] = ()) -> dict[float | None, str]:
    """Colour per budget present (sorted ascending, tab10 order); points without a budget are grey."""
    budgets = sorted({p.budget for p in points if p.budget is not None} | set(extra))
    colours: dict[float | None, str] = {b: _PALETTE[i % len(_PALETTE)] for i, b in enumerate(budgets)}
    colours[None] = _NO_BUDGET
    return colours


def _budget_name(budget: float | None) -> str:
    return "no budget" if budget is None else f"b{budget:.2f}"


def _held_values(held: Sequence[HeldOut]) -> list[float]:
    values = []
    for h in held:
        values += [h.accuracy, *h.ci95, *(v for v in (h.default_accuracy, h.vanilla_accuracy) if v is not None)]
    return [v for v in values if math.isfinite(v)]


def _limits(points: Sequence[Point], accuracies: Sequence[float] = ()) -> tuple[tuple[float, float],
                                                                                 tuple[float, float]]:
    """Axis ranges: FLOPs ratio from 0 to max(1, data) + 4%; accuracy the data's range with a margin on both
    sides, so a marker at 1.0 (or 0.0) is drawn whole. Ticks stay inside [0, 1] (`_accuracy_ticks`)."""
    xs = [p.flops_ratio for p in points] or [1.0]
    ys = [p.accuracy for p in points] + list(accuracies) or [0.0, 1.0]
    x_hi = max(1.0, max(xs)) * 1.04
    low, high = min(ys), max(ys)
    margin = max(0.03, 0.06 * (high - low))
    return (0.0, x_hi), (low - margin, high + margin)


def _accuracy_ticks(lo: float, hi: float) -> list[float]:
    return [t for t in _nice_ticks(lo, hi) if -1e-9 <= t <= 1 + 1e-9]


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


def _fixed(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _describe(point: Point, selected: bool = False) -> list[str]:
    lines = [(point.label or "(unlabelled)") + ("  [selected by export]" if selected else "")]
    if point.budget is not None:
        lines.append(f"budget {point.budget:.2f}")
    if point.trial is not None:
        lines.append(f"trial {point.trial}")
    return lines + [f"{k} = {_fmt(v)}" for k, v in (point.params or {}).items()]


def _tooltip(point: Point, selected: bool = False) -> str:
    head = [f"FLOPs ratio {point.flops_ratio:.4f}", f"tune accuracy {point.accuracy:.4f}"]
    return "\n".join(_describe(point, selected)[:1] + head + _describe(point, selected)[1:])


def _groups(points: Sequence[Point]) -> list[list[Point]]:
    """Points at identical coordinates, grouped (in first-seen order): each group is drawn as one marker."""
    groups: dict[tuple[float, float], list[Point]] = {}
    for p in points:
        groups.setdefault((p.flops_ratio, p.accuracy), []).append(p)
    return list(groups.values())


def _group_tooltip(group: Sequence[Point], selected: set[tuple[float | None, int | None]]) -> str:
    """One trial's tooltip, or for tied trials the shared coordinates and each trial (the selected ones first)."""
    if len(group) == 1:
        p = group[0]
        return _tooltip(p, (p.budget, p.trial) in selected)
    ordered = sorted(group, key=lambda p: (p.budget, p.trial) not in selected)
    lines = [f"{len(group)} trials tie at FLOPs ratio {group[0].flops_ratio:.4f}, "
             f"tune accuracy {group[0].accuracy:.4f}:"]
    for p in ordered[:_TIE_LIST]:
        params = ", ".join(f"{k} {_fmt(v)}" for k, v in (p.params or {}).items())
        mark = "  [selected by export]" if (p.budget, p.trial) in selected else ""
        lines.append(f"- {p.label or p.trial}{mark}" + (f": {params}" if params else ""))
    if len(ordered) > _TIE_LIST:
        lines.append(f"... and {len(ordered) - _TIE_LIST} more")
    return "\n".join(lines)


def _held_tooltip(h: HeldOut) -> str:
    lines = [f"b{h.budget:.2f} trial {h.trial}, selected on the tune split", f"FLOPs ratio {h.flops_ratio:.4f}",
             f"test accuracy {h.accuracy:.4f} [95% CI {h.ci95[0]:.4f}, {h.ci95[1]:.4f}]"]
    if h.tune_accuracy is not None:
        lines.append(f"tune accuracy {h.tune_accuracy:.4f}")
    if h.default_accuracy is not None:
        lines.append(f"default config, same questions: {h.default_accuracy:.4f}")
    if h.vanilla_accuracy is not None:
        lines.append(f"vanilla, same questions: {h.vanilla_accuracy:.4f}")
    if h.preset:
        lines.append(f"preset {h.preset}")
    return "\n".join(lines)


def _vanilla(held: Sequence[HeldOut]) -> list[float]:
    """The distinct vanilla test accuracies (one per test split; presets of one spec share it)."""
    return sorted({round(h.vanilla_accuracy, 9) for h in held if h.vanilla_accuracy is not None
                   and math.isfinite(h.vanilla_accuracy)})


def _ensure_parent(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------------------------------------- PNG


def plot_png(
    points: Sequence[Point], path: str | Path, title: str = "", references: Mapping[str, Point] | None = None,
    held_out: Sequence[HeldOut] | None = None,
) -> Path:
    """Tune-split trials (coloured by budget; tied trials drawn once), the front as a step line, reference points
    as hollow diamonds, dashed vertical lines at the budgets; with `held_out`, each budget's selected config on the
    test split (star with its 95% CI, a dotted line from its tune point), the default config (filled diamond) and
    vanilla (square at FLOPs ratio 1). Names go in the legend, not on the plot, so no two labels overlap; saved as
    a PNG at 120 dpi. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = _ensure_parent(path)
    pts, refs, held = _finite(points), _finite_refs(references), _finite_held(held_out)
    colours = _budget_colours(pts, [h.budget for h in held])
    limits = _limits(pts + list(refs.values()), _held_values(held))
    fig, ax = plt.subplots(figsize=(9, 5.5))
    try:
        _draw_trials(ax, pts, colours)
        _draw_references(ax, refs, colours)
        _draw_held_out(ax, pts, held, colours)
        _finish_axes(ax, limits, title, legend=bool(pts or held))
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path


def _draw_trials(ax, pts: list[Point], colours: dict[float | None, str]) -> None:
    """Budget lines, the trials by budget (a tie drawn once, bigger) and the front's staircase."""
    for budget in sorted({p.budget for p in pts if p.budget is not None}):
        ax.axvline(budget, color=colours[budget], linestyle="--", linewidth=0.9, alpha=0.6)
    for budget in dict.fromkeys(p.budget for p in pts):
        group = _groups([p for p in pts if p.budget == budget])
        xs, ys = [g[0].flops_ratio for g in group], [g[0].accuracy for g in group]
        sizes = [18 + 6 * min(len(g) - 1, 8) for g in group]
        ax.scatter(xs, ys, s=sizes, color=colours[budget], alpha=0.7, clip_on=False,
                   label=f"{_budget_name(budget)} trials (tune)")
    front = pareto_front(pts)
    if front:
        sx, sy = zip(*_step_vertices(front), strict=True)
        ax.plot(sx, sy, color="black", linewidth=1.4, label="Pareto front (tune)")
        ax.scatter([p.flops_ratio for p in front], [p.accuracy for p in front], s=40, facecolors="none",
                   edgecolors="black", linewidths=1.2, zorder=4, clip_on=False)


def _draw_references(ax, refs: dict[str, Point], colours: dict[float | None, str]) -> None:
    for name, ref in refs.items():
        ax.scatter([ref.flops_ratio], [ref.accuracy], marker="D", s=60, facecolors="none", linewidths=1.5,
                   edgecolors=colours.get(ref.budget, _REF_COLOUR), zorder=5, clip_on=False, label=name)


def _draw_held_out(ax, pts: list[Point], held: list[HeldOut], colours: dict[float | None, str]) -> None:
    """Per budget the selected config on the test split (tied to its tune point) and the default; then vanilla."""
    tune_of = {(p.budget, p.trial): p for p in pts}
    for i, h in enumerate(held):
        colour = colours[h.budget]
        tune = tune_of.get((h.budget, h.trial))
        if tune is not None:
            ax.plot([tune.flops_ratio, h.flops_ratio], [tune.accuracy, h.accuracy], color=colour,
                    linestyle=":", linewidth=1.1)
        ax.errorbar([h.flops_ratio], [h.accuracy], yerr=[[h.accuracy - h.ci95[0]], [h.ci95[1] - h.accuracy]],
                    fmt="*", markersize=13, color=colour, markeredgecolor="black", ecolor=colour, capsize=4,
                    zorder=6, clip_on=False, label=SELECTED_TEST if i == 0 else None)
        if h.default_accuracy is not None:
            ax.scatter([h.flops_ratio], [h.default_accuracy], marker="D", s=45, color=colour,
                       edgecolors="black", zorder=6, clip_on=False, label=DEFAULT_TEST if i == 0 else None)
    for accuracy in _vanilla(held):
        ax.scatter([1.0], [accuracy], marker="s", s=55, color=_REF_COLOUR, zorder=6, clip_on=False,
                   label=VANILLA_TEST)


def _finish_axes(ax, limits: tuple[tuple[float, float], tuple[float, float]], title: str, legend: bool) -> None:
    (x0, x1), (y0, y1) = limits
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_yticks(_accuracy_ticks(y0, y1))
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel(Y_LABEL)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0.0)


# ------------------------------------------------------------------------------------------------------ HTML

_W, _H = 900, 500
_ML, _MR, _MT, _MB = 70, 290, 40, 60  # margins; the right one holds the legend

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
svg text { font-size: 12px; }
table { border-collapse: collapse; margin-top: 1em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; cursor: pointer; user-select: none; }
th[data-dir="asc"]::after { content: " \\25B2"; }
th[data-dir="desc"]::after { content: " \\25BC"; }
tr.front td { background: #fff4c2; font-weight: 600; }
tr.selected td:first-child { color: #b00; }
td.text { text-align: left; }
circle:hover, path:hover { stroke: #000; stroke-width: 2; }
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


def _diamond(x: float, y: float, r: float = 6) -> str:
    return f"M{x} {y - r} L{x + r} {y} L{x} {y + r} L{x - r} {y} Z"


def _star(x: float, y: float, r: float = 8) -> str:
    corners = []
    for k in range(10):
        radius = r if k % 2 == 0 else r * 0.45
        angle = math.pi / 2 + k * math.pi / 5
        corners.append(f"{round(x + radius * math.cos(angle), 2)} {round(y - radius * math.sin(angle), 2)}")
    return "M" + " L".join(corners) + " Z"


@dataclass(frozen=True)
class _Canvas:
    """Data coordinates -> SVG pixels of the plot area (inside the margins)."""

    x0: float
    x1: float
    y0: float
    y1: float
    pw: int = _W - _ML - _MR
    ph: int = _H - _MT - _MB

    def sx(self, x: float) -> float:
        return round(_ML + (x - self.x0) / (self.x1 - self.x0) * self.pw, 2)

    def sy(self, y: float) -> float:
        return round(_MT + (self.y1 - y) / (self.y1 - self.y0) * self.ph, 2)


_Legend = list[tuple[str, str]]  # (marker template, name) per legend row


def _svg(points: list[Point], front: list[Point], refs: dict[str, Point], held: list[HeldOut], title: str,
         selected: set[tuple[float | None, int | None]]) -> str:
    colours = _budget_colours(points, [h.budget for h in held])
    (x0, x1), (y0, y1) = _limits(points + list(refs.values()), _held_values(held))
    canvas = _Canvas(x0, x1, y0, y1)
    trials, trial_legend = _svg_trials(canvas, points, front, colours, selected)
    references, reference_legend = _svg_references(canvas, refs, colours)
    tested, tested_legend = _svg_held_out(canvas, points, held, colours)
    out = [f'<svg width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" role="img" overflow="visible">',
           *_svg_axes(canvas, title), *trials, *references, *tested,
           *_svg_legend(canvas, trial_legend + reference_legend + tested_legend), "</svg>"]
    return "\n".join(out)


def _svg_axes(canvas: _Canvas, title: str) -> list[str]:
    """The plot area, grid lines with their tick labels, axis labels and the title."""
    esc, sx, sy, pw, ph = html.escape, canvas.sx, canvas.sy, canvas.pw, canvas.ph
    out = [f'<rect x="{_ML}" y="{_MT}" width="{pw}" height="{ph}" fill="#fff" stroke="#999"/>']
    for t in _nice_ticks(canvas.x0, canvas.x1):
        out.append(f'<line x1="{sx(t)}" y1="{_MT}" x2="{sx(t)}" y2="{_MT + ph}" stroke="#eee"/>')
        out.append(f'<text x="{sx(t)}" y="{_MT + ph + 16}" text-anchor="middle">{t:g}</text>')
    for t in _accuracy_ticks(canvas.y0, canvas.y1):
        out.append(f'<line x1="{_ML}" y1="{sy(t)}" x2="{_ML + pw}" y2="{sy(t)}" stroke="#eee"/>')
        out.append(f'<text x="{_ML - 6}" y="{sy(t) + 4}" text-anchor="end">{t:g}</text>')
    out.append(f'<text x="{_ML + pw / 2}" y="{_H - 16}" text-anchor="middle">{esc(X_LABEL)}</text>')
    out.append(
        f'<text x="16" y="{_MT + ph / 2}" text-anchor="middle" transform="rotate(-90 16 {_MT + ph / 2})">'
        f"{esc(Y_LABEL)}</text>"
    )
    if title:
        out.append(f'<text x="{_ML + pw / 2}" y="24" text-anchor="middle" font-weight="bold">{esc(title)}</text>')
    return out


def _svg_trials(canvas: _Canvas, points: list[Point], front: list[Point], colours: dict[float | None, str],
                selected: set[tuple[float | None, int | None]]) -> tuple[list[str], _Legend]:
    """Budget lines, the front's staircase and one circle per group of tied trials (front ones outlined)."""
    sx, sy = canvas.sx, canvas.sy
    out = []
    for b in sorted({p.budget for p in points if p.budget is not None}):
        out.append(
            f'<line x1="{sx(b)}" y1="{_MT}" x2="{sx(b)}" y2="{_MT + canvas.ph}" stroke="{colours[b]}" '
            'stroke-dasharray="5 4" opacity="0.7"/>'
        )
    if front:
        coords = " ".join(f"{sx(x)},{sy(y)}" for x, y in _step_vertices(front))
        out.append(f'<polyline points="{coords}" fill="none" stroke="#000" stroke-width="1.5"/>')
    on_front = {id(p) for p in front}
    for group in _groups(points):
        p = group[0]
        big = any(id(q) in on_front for q in group)
        stroke = ' stroke="#000" stroke-width="1.3"' if big else ""
        radius = min(3.5 + 0.5 * (len(group) - 1), 7) + (1.5 if big else 0)
        out.append(
            f'<circle cx="{sx(p.flops_ratio)}" cy="{sy(p.accuracy)}" r="{radius}" data-trials="{len(group)}" '
            f'fill="{colours[p.budget]}" fill-opacity="0.8"{stroke}><title>'
            f"{html.escape(_group_tooltip(group, selected))}</title></circle>"
        )
    legend: _Legend = [(f'<circle cx="{{x}}" cy="{{y}}" r="4" fill="{colours[b]}"/>',
                        f"{_budget_name(b)} trials (tune)") for b in dict.fromkeys(p.budget for p in points)]
    if front:
        legend.append(('<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#000" stroke-width="1.5"/>',
                       "Pareto front (tune)"))
    return out, legend


def _svg_references(canvas: _Canvas, refs: dict[str, Point],
                    colours: dict[float | None, str]) -> tuple[list[str], _Legend]:
    out, legend = [], []
    for name, ref in refs.items():
        colour = colours.get(ref.budget, _REF_COLOUR)
        tip = html.escape(_tooltip(replace(ref, label=name if not ref.label else f"{name}: {ref.label}")))
        out.append(f'<path d="{_diamond(canvas.sx(ref.flops_ratio), canvas.sy(ref.accuracy))}" fill="none" '
                   f'stroke="{colour}" stroke-width="1.6"><title>{tip}</title></path>')
        legend.append((f'<path d="{{diamond}}" fill="none" stroke="{colour}" stroke-width="1.6"/>', name))
    return out, legend


def _svg_held_out(canvas: _Canvas, points: list[Point], held: list[HeldOut],
                  colours: dict[float | None, str]) -> tuple[list[str], _Legend]:
    """Per budget the selected config on the test split (star, CI bar, a line from its tune point) and the
    default (small diamond); vanilla as a square at FLOPs ratio 1."""
    sx, sy = canvas.sx, canvas.sy
    out, legend = [], []
    tune_of = {(p.budget, p.trial): p for p in points}
    for h in held:
        colour, x, y = colours[h.budget], sx(h.flops_ratio), sy(h.accuracy)
        tune = tune_of.get((h.budget, h.trial))
        if tune is not None:
            out.append(f'<line x1="{sx(tune.flops_ratio)}" y1="{sy(tune.accuracy)}" x2="{x}" y2="{y}" '
                       f'stroke="{colour}" stroke-dasharray="2 3"/>')
        low, high = sy(h.ci95[0]), sy(h.ci95[1])
        out.append(f'<path d="M{x} {low} L{x} {high} M{x - 4} {low} L{x + 4} {low} M{x - 4} {high} L{x + 4} {high}" '
                   f'stroke="{colour}" stroke-width="1.5"/>')
        tip = html.escape(_held_tooltip(h))
        if h.default_accuracy is not None:
            out.append(f'<path class="default-test" d="{_diamond(x, sy(h.default_accuracy), 5)}" fill="{colour}" '
                       f'stroke="#000"><title>{tip}</title></path>')
        out.append(f'<path class="held-out" d="{_star(x, y)}" fill="{colour}" stroke="#000">'
                   f"<title>{tip}</title></path>")
    if held:
        legend.append(('<path d="{star}" fill="#888" stroke="#000"/>', SELECTED_TEST))
        if any(h.default_accuracy is not None for h in held):
            legend.append(('<path d="{small_diamond}" fill="#888" stroke="#000"/>', DEFAULT_TEST))
    for accuracy in _vanilla(held):
        x, y = sx(1.0), sy(accuracy)
        out.append(f'<rect class="vanilla" x="{x - 5}" y="{y - 5}" width="10" height="10" fill="{_REF_COLOUR}">'
                   f"<title>vanilla (no pruning) on the test split: accuracy {accuracy:.4f}</title></rect>")
    if _vanilla(held):
        legend.append(('<rect x="{sq_x}" y="{sq_y}" width="9" height="9" fill="#111"/>', VANILLA_TEST))
    return out, legend


def _svg_legend(canvas: _Canvas, legend: _Legend) -> list[str]:
    """The legend rows in the right margin, each marker template filled at its row."""
    lx, ly = _ML + canvas.pw + 16, _MT + 10
    out = []
    for i, (marker, name) in enumerate(legend):
        y = ly + 18 * i
        out.append(marker.format(x=lx, y=y, x0=lx - 6, x1=lx + 6, diamond=_diamond(lx, y, 5),
                                 small_diamond=_diamond(lx, y, 4.5), star=_star(lx, y, 6.5), sq_x=lx - 4.5,
                                 sq_y=y - 4.5))
        out.append(f'<text x="{lx + 12}" y="{y + 4}">{html.escape(name)}</text>')
    return out


def _table(points: Sequence[Point], front: list[Point], held: Sequence[HeldOut]) -> str:
    esc = html.escape
    on_front = {id(p) for p in front}
    tested = {(h.budget, h.trial): h for h in held}
    base = ["front", "budget", "trial", "flops_ratio", "accuracy", "test_accuracy", "label"]
    extra = list(dict.fromkeys(k for p in points for k in (p.params or {}) if k not in base))
    head = "".join(f"<th>{esc(str(c))}</th>" for c in base + extra)
    rows = []
    for p in points:
        row = _row(p)
        h = tested.get((p.budget, p.trial))
        row["test_accuracy"] = None if h is None else h.accuracy
        cells = ["&#9733;" if id(p) in on_front else ""]
        cells += [esc(_fmt(row.get(c))) for c in base[1:] + extra]
        tds = "".join(
            f'<td class="text">{c}</td>' if name == "label" else f"<td>{c}</td>"
            for name, c in zip(base + extra, cells, strict=True)
        )
        classes = " ".join(c for c, on in (("front", id(p) in on_front), ("selected", h is not None)) if on)
        rows.append(f'<tr class="{classes}">{tds}</tr>' if classes else f"<tr>{tds}</tr>")
    body = "\n".join(rows)
    return f'<table class="sortable">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>'


def _held_table(held: Sequence[HeldOut]) -> str:
    """The answer per budget: the selected trial and its held-out accuracy next to the default and vanilla."""
    esc = html.escape
    columns = ["budget", "trial", "FLOPs ratio", "tune accuracy", "held-out test accuracy", "95% CI",
               "default config (test)", "vanilla (test)", "test - default", "preset"]
    rows = []
    for h in sorted(held, key=lambda h: h.budget):
        gain = "" if h.default_accuracy is None else f"{h.accuracy - h.default_accuracy:+.3f}"
        cells = [f"{h.budget:.2f}", str(h.trial), f"{h.flops_ratio:.4f}", _fixed(h.tune_accuracy), f"{h.accuracy:.3f}",
                 f"[{h.ci95[0]:.3f}, {h.ci95[1]:.3f}]", _fixed(h.default_accuracy), _fixed(h.vanilla_accuracy), gain,
                 h.preset]
        rows.append("<tr>" + "".join(f'<td class="text">{esc(c)}</td>' if name == "preset" else f"<td>{esc(c)}</td>"
                                     for name, c in zip(columns, cells, strict=True)) + "</tr>")
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "\n".join(rows)
    return (f'<table id="held-out" class="sortable">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n'
            "</table>")


def plot_html(
    points: Sequence[Point], path: str | Path, title: str = "", references: Mapping[str, Point] | None = None,
    held_out: Sequence[HeldOut] | None = None,
) -> Path:
    """One self-contained, offline HTML file: an inline SVG of the same content as `plot_png` (every marker has a
    hover tooltip; tied trials share one marker whose tooltip lists each, the export's selection first), the
    held-out table (with `held_out`: per budget the selected trial's test accuracy and CI, the default config and
    vanilla), and a table of all points with their tune and (where evaluated) test accuracy that sorts on a header
    click (front rows highlighted). No external scripts, styles or fonts. Returns the path."""
    path = _ensure_parent(path)
    drawn, refs, held = _finite(points), _finite_refs(references), _finite_held(held_out)
    front = pareto_front(drawn)
    selected = {(h.budget, h.trial) for h in held}
    heading = html.escape(title or "Pareto front")
    summary = (
        f"{len(points)} points, {len(front)} on the front, hypervolume (ref 1, 0) = {hypervolume(drawn):.4f}. "
        "Hover a point for details; click a column header to sort."
    )
    if held:
        answer = "<h2>Held-out test split: the selected configs</h2>\n" + _held_table(held)
    else:
        answer = "<p>No held-out evaluation yet: <code>autotune export SPEC</code> adds it.</p>"
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
{_svg(drawn, front, refs, held, title, selected)}
{answer}
<h2>All trials (tune split)</h2>
{_table(points, front, held)}
<script>{_JS}</script>
</body>
</html>
"""
    path.write_text(page, encoding="utf-8")
    return path
