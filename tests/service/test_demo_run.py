"""`make demo` as a newcomer runs it, then where the answer lives: the MLflow store read through MlflowClient, and in a
real headless browser (Debian's chromium driven by playwright) the MLflow UI served by `autotune ui` and the summary
Pareto HTML. Screenshots go to $AUTOTUNE_TEST_ARTIFACTS (default: test-artifacts/ at the repository root).

The demo runs once for the module, into a temporary workdir (the same Makefile target and spec; only the workdir,
presets dir and data root are overridden). The browser tests need chromium; `.ci/run`
installs it and sets AUTOTUNE_REQUIRE_BROWSER=1, so in CI they fail rather than skip when it is missing.
"""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from servers import free_port, wait_until_healthy

import adatp
from autotune.spec import load_spec

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("AUTOTUNE_TEST_ARTIFACTS", ROOT / "test-artifacts"))
BUDGETS = (0.25, 0.35, 0.5)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The real `make demo`, into a temporary workdir; returns (overrides, spec, output)."""
    work = tmp_path_factory.mktemp("demo")
    overrides = [f"workdir={work}", f"presets_dir={work / 'presets'}", f"dataset.path={work / 'data'}"]
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    environment.pop("MAKEFLAGS", None)
    before = _git_status()
    result = subprocess.run(["make", "-s", "demo", f"DEMO_ARGS={' '.join(overrides)}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=900, env=environment)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert _git_status() == before  # the demo leaves tracked (and unignored) files as they were
    spec = load_spec(ROOT / "studies" / "demo.yaml", overrides)
    return overrides, spec, result.stdout


def _git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout


def _parent_runs(spec) -> tuple[MlflowClient, dict[float, object], object]:
    client = MlflowClient(spec.tracking_uri)
    experiment = client.get_experiment_by_name(spec.name)
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`autotune.kind` = 'study'")
    parents = {float(run.data.tags["autotune.budget"]): run for run in runs}
    (summary,) = client.search_runs([experiment.experiment_id], filter_string="tags.`autotune.kind` = 'summary'")
    return client, parents, summary


def test_the_demo_store_holds_the_answer_per_budget(demo):
    _, spec, output = demo
    client, parents, summary = _parent_runs(spec)
    assert sorted(parents) == list(BUDGETS)
    for budget, parent in parents.items():
        preset = adatp.load_preset(Path(spec.presets_dir) / f"demo-synthetic-b{budget:.2f}.yaml")
        metrics, tags = parent.data.metrics, parent.data.tags
        for name in ("tau_s", "tau_t", "alpha_boost", "gamma_cap"):
            assert metrics[f"selected.{name}"] == round(getattr(preset.config, name), 4)
        test = preset.results["test_accuracy"]
        assert (metrics["test_accuracy"], metrics["test_accuracy_ci95_low"], metrics["test_accuracy_ci95_high"]) == (
            test["value"], *test["ci95"])
        assert metrics["test_accuracy_ci95_low"] <= metrics["test_accuracy"] <= metrics["test_accuracy_ci95_high"]
        assert metrics["vanilla_test_accuracy"] == preset.results["vanilla_accuracy"]["value"]
        assert metrics["default_test_accuracy"] == preset.results["default_accuracy"]["value"]
        description = tags["mlflow.note.content"]
        assert description.startswith(f"**Use these thresholds at FLOPs budget {budget:.2f} on synthetic**")
        assert f"[95% CI {test['ci95'][0]:.3f}, {test['ci95'][1]:.3f}]" in description
        assert str(Path(spec.presets_dir) / f"demo-synthetic-b{budget:.2f}.yaml") in description
        trial = preset.provenance["trial"]
        winner = client.get_run(tags["selected.run_id"])
        assert winner.data.tags["autotune.selected"] == "true"
        assert int(winner.data.tags["optuna.trial_number"]) == trial == int(metrics["selected.trial"])
        assert winner.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert winner.info.run_name == f"b{budget:.2f} #{trial:03d}"
        others = client.search_runs([parent.info.experiment_id], filter_string=(
            f"tags.`autotune.study` = '{tags['autotune.study']}' and tags.`autotune.selected` = 'true'"))
        assert [run.info.run_id for run in others] == [winner.info.run_id]  # exactly one winner per budget
    # The summary run: one row per budget in its description, the held-out column in its Pareto HTML.
    description = summary.data.tags["mlflow.note.content"]
    for budget in BUDGETS:
        assert f"| {budget:.2f} | " in description
        assert summary.data.metrics[f"b{budget:.2f}.test_accuracy"] == parents[budget].data.metrics["test_accuracy"]
    page = Path(client.download_artifacts(summary.info.run_id, "pareto/pareto.html", str(Path(spec.workdir) / "dl")))
    assert "<th>held-out test accuracy</th>" in page.read_text(encoding="utf-8")
    assert "Pareto plots with the held-out results" in output


def test_the_demo_reproduces_the_shipped_presets(demo):
    """`make demo` from scratch gives the presets the project ships: the same trial, thresholds and results."""
    _, spec, _ = demo
    for budget in BUDGETS:
        name = f"demo-synthetic-b{budget:.2f}.yaml"
        fresh, shipped = adatp.load_preset(Path(spec.presets_dir) / name), adatp.load_preset(ROOT / "presets" / name)
        # TPE's suggestions can differ in the last bit between runs (float sums in another order): equal to 1e-12.
        numbers = {key: value for key, value in shipped.config.to_dict().items() if isinstance(value, float)}
        assert {key: getattr(fresh.config, key) for key in numbers} == pytest.approx(numbers, rel=1e-12, abs=0)
        assert fresh.config.replace(**numbers) == shipped.config, name  # every other field exactly
        assert (fresh.target, fresh.results) == (shipped.target, shipped.results), name
        assert fresh.provenance["trial"] == shipped.provenance["trial"], name


# ------------------------------------------------------------------------------------------------------- browser


def _chromium() -> str | None:
    return next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    if executable is None:
        if os.environ.get("AUTOTUNE_REQUIRE_BROWSER"):
            pytest.fail("chromium is required here (AUTOTUNE_REQUIRE_BROWSER=1): apt-get install chromium")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, headless=True)
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def ui(demo):
    """`autotune ui` on the demo's store, as the README tells a newcomer to start it."""
    overrides, _, _ = demo
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "autotune.cli", "ui", "studies/demo.yaml", *overrides,
                                "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(process, base)
    except AssertionError:
        process.kill()
        raise
    yield base
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.mark.browser
def test_the_parent_run_page_shows_the_selected_thresholds(demo, ui, browser):
    _, spec, _ = demo
    _, parents, _ = _parent_runs(spec)
    page = browser.new_page(viewport={"width": 1400, "height": 2400})
    try:
        for budget, parent in sorted(parents.items()):
            metrics = parent.data.metrics
            page.goto(f"{ui}/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}")
            page.get_by_text("selected.tau_s", exact=True).first.wait_for(timeout=60_000)
            page.get_by_text("Use these thresholds", exact=False).first.wait_for(timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / f"mlflow-parent-run-b{budget:.2f}.png"), full_page=True)
            text = page.inner_text("body")
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            for name in ("tau_s", "tau_t", "alpha_boost", "gamma_cap"):
                key = f"selected.{name}"
                # The metrics table renders each name with its value on the next line (4 decimals at most).
                shown = lines[lines.index(key) + 1]
                assert float(shown) == pytest.approx(metrics[key], abs=1e-9), (key, shown)
            shown = lines[lines.index("test_accuracy") + 1]
            assert float(shown) == pytest.approx(metrics["test_accuracy"], abs=1e-9)
            assert f"FLOPs budget {budget:.2f} on synthetic" in text
            # The collapsed description (before "Show more") already shows the held-out accuracy.
            test = metrics["test_accuracy"]
            assert page.get_by_text(f"Held-out test accuracy {test:.3f}", exact=False).first.is_visible()
    finally:
        page.close()


@pytest.mark.browser
def test_the_summary_html_shows_the_held_out_column(demo, browser):
    _, spec, _ = demo
    client, parents, summary = _parent_runs(spec)
    html = client.download_artifacts(summary.info.run_id, "pareto/pareto.html", str(Path(spec.workdir) / "browser"))
    page = browser.new_page(viewport={"width": 1300, "height": 1100})
    try:
        page.goto(Path(html).as_uri())
        table = page.locator("table#held-out")
        headers = table.locator("th").all_inner_texts()
        assert "held-out test accuracy" in [header.strip() for header in headers]
        column = [header.strip() for header in headers].index("held-out test accuracy")
        rows = table.locator("tbody tr")
        assert rows.count() == len(BUDGETS)
        for i, budget in enumerate(BUDGETS):
            cells = rows.nth(i).locator("td").all_inner_texts()
            assert cells[0] == f"{budget:.2f}"
            assert float(cells[column]) == pytest.approx(parents[budget].data.metrics["test_accuracy"], abs=5e-4)
        # Every held-out star has a tooltip naming its test accuracy; hovering shows the SVG <title>.
        stars = page.locator("svg path.held-out")
        assert stars.count() == len(BUDGETS)
        titles = stars.evaluate_all("nodes => nodes.map(node => node.querySelector('title').textContent)")
        assert all("test accuracy" in title and "95% CI" in title for title in titles)
        page.screenshot(path=str(ARTIFACTS / "summary-pareto.png"), full_page=True)
    finally:
        page.close()
