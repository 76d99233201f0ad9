"""The README quotes every benchmark table exactly as bench/tables.py renders it from bench/results/*.json."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import tables  # noqa: E402

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_results_table_is_in_the_readme():
    rendered = tables.render_all()
    assert {"prune_overhead", "prefill_speed_7b", "prefill_speed_0.5b", "selection_cost", "trial_cost",
            "storage_load", "search_efficiency"} <= set(rendered)
    for stem, markdown in rendered.items():
        for block in markdown.split("\n\n"):
            assert block in README, f"README does not quote bench/results/{stem}.json as rendered:\n{block}"


def test_a_changed_number_no_longer_matches(tmp_path):
    data = json.loads((tables.RESULTS / "prefill_speed_7b.json").read_text(encoding="utf-8"))
    original = tables.prefill_speed(data)
    data["rows"][1]["latency_ms"] += 1.0
    (tmp_path / "prefill_speed_7b.json").write_text(json.dumps(data), encoding="utf-8")
    changed = tables.render_all(tmp_path)["prefill_speed_7b"]
    assert original in README and changed not in README
    assert f"| {data['rows'][1]['latency_ms']:.1f} |" in changed


def own_data_rows() -> list[str]:
    """The README's demo-own-data table rows, rendered from the presets that run shipped."""
    import adatp

    rows = []
    for path in sorted((ROOT / "presets").glob("demo-own-data-*.yaml")):
        preset = adatp.load_preset(path)
        kind, test, default, _ = preset.held_out
        paired = preset.results["paired"]
        low, high = paired["test_minus_default_ci95"]
        rows.append(f"| {preset.target['flops_budget']:.2f} | {preset.results['flops_ratio']:.3f} | "
                    f"{test['value']:.3f} [{test['ci95'][0]:.3f}, {test['ci95'][1]:.3f}] | {default['value']:.3f} | "
                    f"{paired['test_minus_default']:+.3f} [{low:+.3f}, {high:+.3f}] |")
        assert kind == "fidelity" and preset.results["scoring"]["reference"] == "unpruned"
    return rows


def test_the_own_data_table_is_the_shipped_presets():
    rows = own_data_rows()
    assert len(rows) == 2
    for row in rows:
        assert row in README, row
