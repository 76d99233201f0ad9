"""The README and docs/ quote every benchmark table exactly as bench/tables.py renders it from bench/results/*.json,
and every held-out table exactly as the shipped presets hold it."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import tables  # noqa: E402

README = (ROOT / "README.md").read_text(encoding="utf-8")
# Where the tables live: the README's first screen, and docs/ for everything else.
DOCS = "\n".join([README, *(path.read_text(encoding="utf-8") for path in sorted((ROOT / "docs").glob("*.md")))])


def test_every_results_table_is_in_the_readme():
    rendered = tables.render_all()
    assert {"prune_overhead", "prefill_speed_7b", "prefill_speed_0.5b", "selection_cost", "trial_cost",
            "storage_load", "search_efficiency"} <= set(rendered)
    for stem, markdown in rendered.items():
        for block in markdown.split("\n\n"):
            assert block in DOCS, f"README/docs do not quote bench/results/{stem}.json as rendered:\n{block}"


def test_a_changed_number_no_longer_matches(tmp_path):
    data = json.loads((tables.RESULTS / "prefill_speed_7b.json").read_text(encoding="utf-8"))
    original = tables.prefill_speed(data)
    data["rows"][1]["latency_ms"] += 1.0
    (tmp_path / "prefill_speed_7b.json").write_text(json.dumps(data), encoding="utf-8")
    changed = tables.render_all(tmp_path)["prefill_speed_7b"]
    assert original in DOCS and changed not in DOCS
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
        assert row in DOCS, row


def hybrid_budget_rows() -> list[str]:
    """The README's budget-to-retention table at the Qwen3.5-9B shape, from adatp.flops."""
    import dataclasses

    from transformers import Qwen3_5TextConfig

    import adatp
    from adatp.flops import kept_count, lm_shape

    n_visual, n_text = 16 * 256, 14 + 4 * 16 + 64  # 16 groups of 256; prefix, 16 x (<t>, start, end), question
    hybrid = lm_shape(Qwen3_5TextConfig())
    assert hybrid.layers == 32 and hybrid.kinds.count("full_attention") == 8
    dense = dataclasses.replace(hybrid, layer_types=(), linear=None)
    rows = []
    for budget in (0.2, 0.3, 0.5):
        cells = []
        for shape in (hybrid, dense):
            for layer in (0, 4):
                retention = adatp.retention_for_budget(shape, n_visual, n_text, budget, layer)
                cells.append(f"{retention:.3f} ({kept_count(n_visual, retention)})")
        rows.append(f"| {budget:.1f} | " + " | ".join(cells) + " |")
    return rows


def test_the_hybrid_budget_table_is_what_adatp_flops_computes():
    for row in hybrid_budget_rows():
        assert row in DOCS, row
    # On the hybrid LM every budget needs fewer kept tokens than on its dense twin.
    for row in hybrid_budget_rows():
        kept = [int(cell.split("(")[1].rstrip(") ")) for cell in row.split("|")[2:-1]]
        assert kept[0] < kept[2] and kept[1] < kept[3]


def held_out_rows(pattern: str) -> list[str]:
    """A demo's held-out table, one row per shipped preset: budget, trial, FLOPs, tune, test, vanilla, default, and
    tuned minus default."""
    import adatp

    rows = []
    for path in sorted((ROOT / "presets").glob(pattern)):
        preset = adatp.load_preset(path)
        results = preset.results
        test, paired = results["test_accuracy"], results["paired"]
        low, high = paired["test_minus_default_ci95"]
        rows.append(f"| {preset.target['flops_budget']:.2f} | {preset.provenance['trial']} | "
                    f"{results['flops_ratio']:.4f} | {results['tune_accuracy']['value']:.3f} | "
                    f"{test['value']:.3f} [{test['ci95'][0]:.3f}, {test['ci95'][1]:.3f}] | "
                    f"{results['vanilla_accuracy']['value']:.3f} | {results['default_accuracy']['value']:.3f} | "
                    f"{paired['test_minus_default']:+.3f} [{low:+.3f}, {high:+.3f}] |")
    return rows


def test_the_first_screen_demo_table_is_the_shipped_presets():
    rows = held_out_rows("demo-synthetic-b*.yaml")
    assert len(rows) == 3
    first_screen = "\n".join(README.splitlines()[:40])  # the answer of the demo, without scrolling
    for row in rows:
        assert row in first_screen, row


def test_the_qwen_demo_table_is_the_shipped_presets():
    rows = held_out_rows("demo-qwen-synthetic-b*.yaml")
    assert len(rows) == 3
    for row in rows:
        assert row in DOCS, row
