"""Pareto front, hypervolume, front table and the PNG/HTML plots."""

from __future__ import annotations

import itertools
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autotune import pareto
from autotune.pareto import HeldOut, Point, front_table, hypervolume, pareto_front, plot_html, plot_png


def _key(points: list[Point]) -> list[tuple[float, float, str]]:
    return [(p.flops_ratio, p.accuracy, p.label) for p in points]


def test_pareto_front_hand_made_set():
    points = [
        Point(0.5, 0.80, "mid"),
        Point(0.2, 0.60, "cheap"),
        Point(0.6, 0.70, "dominated by mid"),
        Point(0.5, 0.75, "same flops, worse"),
        Point(0.9, 0.85, "best"),
        Point(0.2, 0.60, "cheap duplicate"),
        Point(1.0, 0.85, "same acc, more flops"),
        Point(0.3, 0.55, "dominated by cheap"),
    ]
    assert _key(pareto_front(points)) == [(0.2, 0.60, "cheap"), (0.5, 0.80, "mid"), (0.9, 0.85, "best")]


def test_pareto_front_edge_cases():
    assert pareto_front([]) == []
    single = Point(0.4, 0.5, "only")
    assert pareto_front([single]) == [single]
    # the duplicate given first wins, whatever the input order of other points
    a, b = Point(0.4, 0.5, "first"), Point(0.4, 0.5, "second")
    assert [p.label for p in pareto_front([Point(0.9, 0.1), a, b])] == ["first"]
    assert [p.label for p in pareto_front([b, a])] == ["second"]
    # non-finite points are ignored
    assert _key(pareto_front([Point(math.nan, 0.9, "nan"), Point(0.5, 0.5, "ok")])) == [(0.5, 0.5, "ok")]


def test_point_params_ignored_by_equality_and_hash():
    a = Point(0.3, 0.7, "x", 0.3, 1, {"t": 0.1})
    b = Point(0.3, 0.7, "x", 0.3, 1, {"t": 0.9})
    assert a == b and hash(a) == hash(b)


def test_hypervolume_single_point():
    assert hypervolume([Point(0.3, 0.9)]) == pytest.approx(0.63)
    assert hypervolume([Point(0.3, 0.9)], reference=(0.8, 0.5)) == pytest.approx(0.5 * 0.4)


def test_hypervolume_staircase():
    points = [Point(0.2, 0.5), Point(0.4, 0.7), Point(0.7, 0.8)]
    # strips [0.2,0.4) at 0.5, [0.4,0.7) at 0.7, [0.7,1.0] at 0.8
    expected = 0.2 * 0.5 + 0.3 * 0.7 + 0.3 * 0.8
    assert hypervolume(points) == pytest.approx(expected)
    # dominated points and input order change nothing
    assert hypervolume(points[::-1] + [Point(0.5, 0.6), Point(0.4, 0.7)]) == pytest.approx(expected)


def test_hypervolume_ignores_points_outside_reference():
    inside = [Point(0.2, 0.5)]
    outside = [Point(1.2, 0.99), Point(0.1, -0.1), Point(0.05, 0.3)]
    ref = (1.0, 0.4)
    assert hypervolume(inside + outside, reference=ref) == pytest.approx(0.8 * 0.1)
    assert hypervolume(outside[:2]) == 0.0


def test_hypervolume_empty():
    assert hypervolume([]) == 0.0


points_strategy = st.lists(
    st.builds(
        Point,
        st.floats(0.01, 1.0, allow_nan=False),
        st.floats(0.0, 1.0, allow_nan=False),
    ),
    max_size=20,
)


@settings(max_examples=100, deadline=None)
@given(points_strategy, st.floats(0.01, 1.0), st.floats(0.0, 1.0))
def test_hypervolume_monotone_and_front_properties(points, flops, acc):
    new = Point(flops, acc)
    assert hypervolume([*points, new]) >= hypervolume(points) - 1e-12
    assert hypervolume(points) == pytest.approx(hypervolume(pareto_front(points)))
    front = pareto_front(points)
    assert all(a.flops_ratio < b.flops_ratio and a.accuracy < b.accuracy for a, b in itertools.pairwise(front))
    for p in points:  # every point is dominated by or equal to a front point
        assert any(f.flops_ratio <= p.flops_ratio and f.accuracy >= p.accuracy for f in front)


def test_front_table_rows():
    points = [
        Point(0.3, 0.7, "b0.30 #1", 0.3, 1, {"tau": 0.2, "label": "not overwritten"}),
        Point(0.5, 0.6, "b0.50 #2", 0.5, 2, {"tau": 0.4}),
        Point(0.5, 0.8, "b0.50 #3", 0.5, 3),
    ]
    rows = front_table(points)
    assert rows == [
        {"budget": 0.3, "trial": 1, "flops_ratio": 0.3, "accuracy": 0.7, "label": "b0.30 #1", "tau": 0.2},
        {"budget": 0.5, "trial": 3, "flops_ratio": 0.5, "accuracy": 0.8, "label": "b0.50 #3"},
    ]
    assert list(rows[0]) == ["budget", "trial", "flops_ratio", "accuracy", "label", "tau"]


def _sample_points() -> list[Point]:
    points = []
    for i, (budget, f, a) in enumerate(
        [(0.3, 0.28, 0.61), (0.3, 0.30, 0.64), (0.5, 0.45, 0.66), (0.5, 0.49, 0.63), (0.7, 0.66, 0.68)]
    ):
        points.append(Point(f, a, f"b{budget:.2f} #{i}", budget, i, {"tau": 0.1 * i, "k": i}))
    points.append(Point(0.4, 0.5, 'odd <&> "label"', None, 99))
    return points


def test_plot_png(tmp_path):
    import matplotlib.image

    refs = {"vanilla": Point(1.0, 0.69), "default b0.30": Point(0.3, 0.6)}
    path = plot_png(_sample_points(), tmp_path / "sub" / "front.png", title="test", references=refs)
    assert path.read_bytes()[:4] == b"\x89PNG"
    height, width = matplotlib.image.imread(path).shape[:2]
    assert 300 <= width <= 3000 and 200 <= height <= 3000
    # empty input still produces an image
    assert plot_png([], tmp_path / "empty.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_html_self_contained(tmp_path):
    points = _sample_points()
    refs = {"vanilla <ref>": Point(1.0, 0.69)}
    text = plot_html(points, tmp_path / "front.html", title="t & t", references=refs).read_text(encoding="utf-8")

    assert text.count("<svg") == 1 and text.count("</svg>") == 1
    svg = text[text.index("<svg") : text.index("</svg>")]
    circles = re.findall(r"<circle[^>]*><title>(.*?)</title></circle>", svg, flags=re.S)
    assert len(circles) == len(points)
    assert svg.count("<title>") == len(points) + len(refs)  # one per point, one per reference
    assert any(t.startswith("odd &lt;&amp;&gt; &quot;label&quot;") for t in circles)
    assert "<&>" not in text and "vanilla &lt;ref&gt;" in svg and "t &amp; t" in text
    assert "tau = 0.1" in text  # params in tooltips

    assert "http://" not in text and "https://" not in text
    assert not re.search(r"<(script|link|img)[^>]*\b(src|href)=", text)
    assert "<polyline" in svg  # the front

    body = text[text.index("<tbody>") : text.index("</tbody>")]
    assert body.count("<tr") == len(points)
    assert body.count('<tr class="front">') == len(pareto_front(points))
    assert "<th>tau</th>" in text and "<th>k</th>" in text


def test_plot_html_empty(tmp_path):
    text = plot_html([], tmp_path / "empty.html").read_text(encoding="utf-8")
    assert text.count("<svg") == 1 and "<tbody>\n\n</tbody>" in text


def _tied_points() -> tuple[list[Point], list[HeldOut]]:
    """Two budgets whose trials tie in threes (one FLOPs ratio per budget, few distinct accuracies), as in a study."""
    points = [Point(0.25, acc, f"b0.25 #{i:03d}", 0.25, i, {"tau_s": 0.1 * i})
              for i, acc in enumerate([0.9, 0.975, 0.975, 0.975, 0.8, 1.0])]
    points += [Point(0.5, acc, f"b0.50 #{i:03d}", 0.5, i, {"tau_s": 0.05 * i})
               for i, acc in enumerate([1.0, 1.0, 0.95, 1.0])]
    held = [HeldOut(0.25, 2, 0.2493, 0.95, (0.908, 0.983), 0.883, 1.0, 0.975, "p/b0.25.yaml"),
            HeldOut(0.5, 1, 0.4999, 1.0, (1.0, 1.0), 0.908, 1.0, 1.0, "p/b0.50.yaml")]
    return points, held


def test_plot_html_ties_share_one_marker_listing_every_trial(tmp_path):
    points, held = _tied_points()
    text = plot_html(points, tmp_path / "front.html", held_out=held).read_text(encoding="utf-8")
    svg = text[text.index("<svg") : text.index("</svg>")]
    circles = re.findall(r'<circle[^>]*data-trials="(\d+)"[^>]*><title>(.*?)</title></circle>', svg, flags=re.S)
    assert sorted(int(n) for n, _ in circles) == [1, 1, 1, 1, 3, 3]  # 10 trials, 6 distinct coordinates
    tie = next(title for n, title in circles if n == "3" and "0.9750" in title)
    assert tie.startswith("3 trials tie at FLOPs ratio 0.2500, tune accuracy 0.9750:")
    lines = tie.split("\n")[1:]
    assert lines[0].startswith("- b0.25 #002  [selected by export]")  # the exported trial is listed first
    assert sorted(line.split(":")[0].split("  ")[0] for line in lines) == ["- b0.25 #001", "- b0.25 #002",
                                                                           "- b0.25 #003"]


def test_plot_html_held_out_markers_and_table(tmp_path):
    points, held = _tied_points()
    text = plot_html(points, tmp_path / "front.html", held_out=held).read_text(encoding="utf-8")
    svg = text[text.index("<svg") : text.index("</svg>")]
    stars = re.findall(r'<path class="held-out"[^>]*><title>(.*?)</title>', svg, flags=re.S)
    assert len(stars) == 2 and "test accuracy 0.9500 [95% CI 0.9080, 0.9830]" in stars[0]
    assert len(re.findall(r'class="default-test"', svg)) == 2
    assert svg.count('class="vanilla"') == 1  # both presets share one test split: one vanilla marker
    table = text[text.index('<table id="held-out"') :]
    table = table[: table.index("</table>")]
    assert "<th>held-out test accuracy</th>" in table and "<td>0.950</td>" in table and "<td>+0.067</td>" in table
    body = text[text.rindex("<tbody>") :]
    assert body.count('class="selected"') + body.count('class="front selected"') == 2
    # The legend names every marker, so the plot area holds no free-standing labels that could overlap.
    plot_texts = re.findall(r'<text x="([\d.]+)"[^>]*>([^<]*)</text>', svg)
    right_edge = 70 + (900 - 70 - 290)
    legend = [label for x, label in plot_texts if float(x) > right_edge]
    assert {"b0.25 trials (tune)", "selected config, test split (95% CI)", "default config, test split",
            "vanilla (no pruning), test split"} <= set(legend)


def test_no_marker_is_clipped_at_accuracy_one(tmp_path):
    points, held = _tied_points()
    (x0, x1), (y0, y1) = pareto._limits(points, pareto._held_values(held))
    assert y1 >= 1.0 + 0.03 and y0 <= 0.8 - 0.03 and x1 > 1.0  # half a marker fits beyond the extremes
    assert max(pareto._accuracy_ticks(y0, y1)) <= 1.0  # but no tick claims an accuracy above 1
    text = plot_html(points, tmp_path / "f.html", held_out=held).read_text(encoding="utf-8")
    top = 40  # _MT: the plot area's top edge in the SVG
    circles = [(float(y), float(r)) for y, r in re.findall(r'<circle cx="[\d.]+" cy="([\d.]+)" r="([\d.]+)"', text)]
    assert len(circles) >= 6 and all(y - r >= top for y, r in circles)


def test_plot_png_with_held_out(tmp_path):
    import matplotlib.image

    points, held = _tied_points()
    path = plot_png(points, tmp_path / "front.png", title="t", held_out=held)
    height, width = matplotlib.image.imread(path).shape[:2]
    assert width > height > 200
