"""End to end, the way users work: a real JupyterLab server driven by a real browser (Chromium).

1. ``jupyter lab --no-browser`` on a free localhost port with a random token, serving a temporary
   copy of ``notebooks/`` in which notebook 07's parameters cell says ``smoke = True``;
2. Chromium (Debian's, through Playwright) opens ``07_explorer.ipynb``, runs all cells from the
   Run menu and waits for the explorer's widgets;
3. it changes the task, the mask kind and the epochs, clicks Train, and checks that the live
   plotly curve gains the new run's points (as many epochs as asked for) and that the sparsity
   bars show the new run;
4. it reloads the tab, as users do, and checks that both figures come back as they were;
   screenshots go to ``test-artifacts/browser/`` (also on failure), and any JavaScript error in
   the console fails the test (the few allowed ones are listed below, each with its reason);
5. the batch runner (``piggylab batch``) runs a small grid of the fixture notebooks and Chromium
   opens its ``report.html`` from disk, checking that every plotly figure rendered.

The server and the browser are stopped however a test ends. The module must stay under three
minutes: every wait takes its timeout from one shared budget (`BUDGET_S`).
Chromium comes from ``scripts/install_chromium.sh`` (``make test`` runs it); without apt-get
the tests skip, except on CI (``$CI`` set), where they fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml

from browser_support import (
    ARTIFACTS, CHROMIUM_ARGS, ROOT, Allowed, ConsoleLog, Deadline, chromium_or_skip, jupyter_lab, save_screenshot,
)

pytestmark = pytest.mark.browser

BUDGET_S = 170.0
"""The whole module (browser start, both tests, teardown) must finish in under 3 minutes."""

NOTEBOOK = "07_explorer.ipynb"
FIXTURES = ROOT / "tests" / "notebooks_fixture"

ALLOWED_CONSOLE_ERRORS: tuple[Allowed, ...] = ()
"""Console errors that are not the lab's fault, each matched narrowly with the reason it is allowed,
e.g. ``Allowed(r"^\\[console\\.error\\] .*/favicon\\.ico: Failed to load resource", "the browser's own
favicon request")``. None is needed today: the server is started so that JupyterLab does not try
the network (no news, no update check, read-only extension manager)."""


# ---------------------------------------------------------------------------------------------
# Fixtures: one browser for the module, a fresh page (and console log) per test
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def deadline() -> Deadline:
    return Deadline(BUDGET_S)


@pytest.fixture(scope="module")
def browser(deadline, tmp_path_factory):
    chromium = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    shutil.rmtree(ARTIFACTS, ignore_errors=True)  # screenshots and logs of this run only
    profile = tmp_path_factory.mktemp("chromium-profile")  # a fresh user-data dir
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            user_data_dir=str(profile), executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1500}, accept_downloads=False)
        try:
            yield context
        finally:
            context.close()
    print(f"browser tests: {deadline.elapsed:.1f} s in all (budget {BUDGET_S:.0f} s)")


@pytest.fixture
def page(browser, deadline, request):
    """A new tab whose console errors and uncaught exceptions are collected in ``page.console``;
    all its console messages are kept in ``test-artifacts/browser/console-TEST.log``."""
    page = browser.new_page()
    page.set_default_timeout(deadline.ms(60))
    page.console = ConsoleLog(ALLOWED_CONSOLE_ERRORS)
    page.console.watch(page)
    try:
        yield page
    finally:
        for text, reason in page.console.ignored:
            print(f"allowed console error ({reason}): {text}")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / f"console-{request.node.name}.log").write_text("\n".join(page.console.messages) + "\n")
        page.close()


# ---------------------------------------------------------------------------------------------
# JupyterLab helpers
# ---------------------------------------------------------------------------------------------

def smoke_copy_of_notebooks(dest: Path) -> Path:
    """A copy of ``notebooks/`` where notebook 07 runs with ``smoke = True``; returns the folder."""
    shutil.copytree(ROOT / "notebooks", dest, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "runs"))
    path = dest / NOTEBOOK
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert cells, f"{NOTEBOOK} has no cell tagged 'parameters'"
    source, count = re.subn(r"(?m)^smoke\s*=\s*\w+", "smoke = True", cells[0].source)
    assert count == 1, f"{NOTEBOOK}'s parameters cell has no `smoke = ...` line"
    cells[0].source = source
    nbformat.write(nb, path)
    return dest


def code_cell_count(path: Path) -> int:
    return sum(c.cell_type == "code" for c in nbformat.read(path, as_version=4).cells)


def accept_kernel_dialog(page) -> bool:
    """Accepts JupyterLab's "Select Kernel" dialog (the notebook's own kernel is preselected).

    JupyterLab sometimes asks even though the notebook names an installed kernel (a race between
    the server starting the kernel and the page asking for it); a user would press Select.
    """
    dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    if dialog.count() and dialog.first.is_visible():
        dialog.locator(".jp-mod-accept").first.click()
        return True
    return False


KERNEL_IDLE_JS = """() => {
    const item = document.querySelector('#jp-main-statusbar .jp-StatusBar-TextItem[title^="Change kernel"]');
    return !!item && /\\|\\s*Idle$/.test(item.textContent.trim());
}"""


def wait_for_kernel_idle(page, deadline: Deadline, cap_s: float) -> None:
    """Until the status bar says the notebook's kernel is ``Idle`` (started, connected, ready).

    Running cells earlier, while it still says Initializing/Connecting, can make JupyterLab start
    a second kernel and leave the notebook talking to the first one, which it shuts down.
    """
    end = time.monotonic() + deadline.ms(cap_s) / 1000
    while time.monotonic() < end:
        accept_kernel_dialog(page)
        if page.evaluate(KERNEL_IDLE_JS):
            return
        page.wait_for_timeout(200)
    status = page.locator("#jp-main-statusbar").inner_text().replace("\n", " ")
    pytest.fail(f"the notebook's kernel did not become idle within {cap_s:.0f} s; status bar: {status}", pytrace=False)


def run_all_cells(page) -> None:
    """Run → Run All Cells, from the menu bar, as a user would."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-item:visible .lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()


CELL_STATE_JS = """() => {
    const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt')]
        .map(e => e.textContent.trim());
    const errors = [...document.querySelectorAll(
        '.jp-Notebook .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')]
        .map(e => e.textContent.slice(0, 2000));
    return {prompts, errors};
}"""


def wait_for_all_cells(page, expected: int, deadline: Deadline, cap_s: float) -> None:
    """Until every code cell shows an execution count (``[n]:``); fails at once on an error output."""
    end = time.monotonic() + deadline.ms(cap_s) / 1000
    state = {}
    while time.monotonic() < end:
        accept_kernel_dialog(page)
        state = page.evaluate(CELL_STATE_JS)
        if state["errors"]:
            pytest.fail(f"{NOTEBOOK} raised while running all cells:\n" + "\n".join(state["errors"]), pytrace=False)
        done = [p for p in state["prompts"] if re.fullmatch(r"\[\d+\]:", p)]
        if len(state["prompts"]) == expected and len(done) == expected:
            return
        page.wait_for_timeout(250)
    pytest.fail(f"{NOTEBOOK} did not finish running within {cap_s:.0f} s; prompts: {state.get('prompts')}",
                pytrace=False)


FIGURE_JS = """gd => ({
    traces: (gd.data || []).map(t => ({name: t.name || '', x: t.x ? t.x.length : 0})),
    title: (gd.layout && gd.layout.title && gd.layout.title.text) || '',
    svgPoints: gd.querySelectorAll('.scatterlayer .trace path.point').length,
    svgLines: gd.querySelectorAll('.scatterlayer .trace path.js-line').length,
    svgBars: gd.querySelectorAll('.barlayer .trace path').length,
})"""


def figure_state(page, container: str) -> dict:
    """The plotly figure rendered inside `container` (a CSS class of the explorer): data and SVG."""
    return page.locator(f"{container} .js-plotly-plot").first.evaluate(FIGURE_JS)


def points(state: dict) -> int:
    return sum(t["x"] for t in state["traces"])


def pick_other_option(select, prefer: str | None = None) -> str:
    """Selects an option of a <select> other than the current one (`prefer` if it exists); returns it."""
    options = select.locator("option").all_text_contents()
    current = select.evaluate("s => s.options[s.selectedIndex] ? s.options[s.selectedIndex].text : ''")
    choices = [o for o in options if o != current]
    assert choices, f"only one option to choose from: {options}"
    choice = prefer if prefer in choices else choices[-1]
    select.select_option(label=choice)
    return choice


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------

def test_explorer_trains_live_in_jupyterlab(page, deadline, tmp_path):
    """Notebook 07 in JupyterLab: run all, change task/mask kind/epochs, Train, and watch the figures."""
    root = smoke_copy_of_notebooks(tmp_path / "notebooks")
    with jupyter_lab(root, tmp_path / "jupyter", start_timeout=min(60, deadline.left)) as server:
        try:
            page.goto(server.lab_url(NOTEBOOK), timeout=deadline.ms(60))
            page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=deadline.ms(60))
            wait_for_kernel_idle(page, deadline, cap_s=60)
            run_all_cells(page)
            wait_for_all_cells(page, code_cell_count(root / NOTEBOOK), deadline, cap_s=90)

            # The widgets rendered, and the notebook's own runs reached the figures.
            train = page.locator("button.piggylab-train")
            train.wait_for(state="visible", timeout=deadline.ms(10))
            page.locator(".piggylab-explorer").scroll_into_view_if_needed()
            status = page.locator(".piggylab-status")
            assert status.inner_text().startswith("done:"), status.inner_text()
            before = figure_state(page, ".piggylab-curve")
            assert points(before) > 0 and before["svgPoints"] > 0, f"the notebook's runs drew no curve: {before}"
            sparsity_before = figure_state(page, ".piggylab-sparsity")
            assert sparsity_before["svgBars"] > 0, f"no sparsity bars after the notebook's runs: {sparsity_before}"

            # Change the settings as a user would, then press Train.
            method = page.locator(".piggylab-method select")
            if method.count() and method.input_value() != "piggyback":
                method.select_option("piggyback")
            task = pick_other_option(page.locator(".piggylab-task select"))
            mask_kind = pick_other_option(page.locator(".piggylab-mask-kind select"), prefer="ternary")
            epochs = page.locator(".piggylab-epochs input")
            epochs.fill("2")
            epochs.press("Enter")
            page.wait_for_timeout(300)  # let the widget edits reach the kernel before the click does
            train.click()

            # The live curve gains points while the run trains, then the run's sparsity shows up.
            seen = [points(before)]
            end = time.monotonic() + deadline.ms(60) / 1000
            while time.monotonic() < end:
                now = figure_state(page, ".piggylab-curve")
                seen.append(points(now))
                if status.inner_text().startswith("done:") and train.is_enabled() and seen[-1] > seen[0]:
                    break
                if "error" in status.inner_text()[:20]:
                    pytest.fail(f"the explorer's run failed: {status.inner_text()}", pytrace=False)
                page.wait_for_timeout(100)
            else:
                pytest.fail(f"the run did not finish in time; status: {status.inner_text()!r}; points seen: {seen}",
                            pytrace=False)
            after = figure_state(page, ".piggylab-curve")
            assert len(after["traces"]) == len(before["traces"]) + 2, after["traces"]
            loss, accuracy = after["traces"][-2], after["traces"][-1]
            label = f"{task} (piggyback, {mask_kind} mask)"
            assert label in loss["name"], f"the new run is not the one set on the widgets: {loss['name']!r}"
            assert accuracy["x"] == 2, f"asked for 2 epochs, the curve shows {accuracy['x']} validation points"
            assert loss["x"] > 0 and after["svgPoints"] > before["svgPoints"], (before, after)
            page.wait_for_function(
                "n => [...document.querySelectorAll('.piggylab-sparsity .js-plotly-plot')]"
                ".some(gd => gd.layout && gd.layout.title && gd.layout.title.text.includes(n))",
                arg=f"run #{len(after['traces']) // 2}", timeout=deadline.ms(10))
            sparsity = figure_state(page, ".piggylab-sparsity")
            assert task in sparsity["title"] and sparsity["svgBars"] > 0, sparsity
            runs_table = page.locator(".piggylab-runs table")
            assert runs_table.locator("tbody tr").count() == len(after["traces"]) // 2
            # Live: the curve grew while the run was still training, not only once it was done.
            # (A run too quick to be sampled says nothing; smoke runs here take several seconds.)
            during = sorted({n for n in seen if seen[0] < n < points(after)})
            seconds = float(re.search(r"([\d.]+) s$", status.inner_text().strip()).group(1))
            assert during or seconds < 2, (f"the curve did not update during the {seconds:.1f} s run, only at its "
                                           f"end: point counts seen {seen}")
            print(f"explorer: {task}, {mask_kind} mask, 2 epochs in {seconds:.1f} s; curve points {seen[0]} -> "
                  f"{points(after)}, counts seen while training: {during}")

            page.locator(".piggylab-explorer").scroll_into_view_if_needed()
            save_screenshot(page, "explorer")

            # Save and reload the tab, as users do: the explorer comes back from the running kernel's
            # widget state and must show the same figures (new views start from that state, not from
            # the messages that updated the old ones).
            page.keyboard.press("Control+s")
            page.wait_for_function("() => !document.querySelector('.lm-TabBar-tab.jp-mod-current.jp-mod-dirty')",
                                   timeout=deadline.ms(10))
            page.reload(timeout=deadline.ms(60))
            wait_for_kernel_idle(page, deadline, cap_s=60)
            page.locator(".piggylab-curve .js-plotly-plot").first.wait_for(timeout=deadline.ms(30))
            page.locator(".piggylab-sparsity .js-plotly-plot").first.wait_for(timeout=deadline.ms(10))
            reloaded = figure_state(page, ".piggylab-curve")
            assert reloaded["traces"] == after["traces"], (
                f"after a page reload the training curve lost its runs: {reloaded['traces']} instead of "
                f"{after['traces']}")
            assert reloaded["svgPoints"] == after["svgPoints"], (reloaded, after)
            assert figure_state(page, ".piggylab-sparsity")["title"] == sparsity["title"], (
                "after a page reload the sparsity bars are not the latest run's")
            page.console.check(f"{NOTEBOOK} in JupyterLab")
        except BaseException:
            save_screenshot(page, "explorer-failure")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            (ARTIFACTS / "jupyter-lab.log").write_text(server.log_tail(200_000))
            print(f"server log: {ARTIFACTS / 'jupyter-lab.log'}")
            print("console:\n  " + "\n  ".join(page.console.messages[-50:]))
            raise


def test_batch_report_renders_in_chromium(page, deadline, tmp_path):
    """`piggylab batch` on the fixture notebooks, then its report.html opened from disk."""
    out = tmp_path / "out"
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "description": "browser test: fixture notebooks",
        "output": str(out), "notebooks_dir": str(FIXTURES), "workers": 2,
        "runs": [{"notebook": "ok_metrics", "grid": {"task": ["alpha", "beta"]}},
                 {"notebook": "fails", "parameters": {"task": "gamma"}}],
    }))
    batch = subprocess.run([sys.executable, "-m", "piggylab.cli", "batch", str(grid), "--scheduler", "local-threads",
                            "--quiet"], capture_output=True, text=True, cwd=tmp_path,
                           timeout=max(1.0, min(90, deadline.left)))
    report = out / "report.html"
    assert batch.returncode == 1, f"expected one failed run (fails.ipynb):\n{batch.stdout}\n{batch.stderr}"
    assert report.exists(), batch.stdout + batch.stderr

    try:
        page.goto(report.as_uri(), wait_until="load", timeout=deadline.ms(30))
        expected = page.locator(".plotly-graph-div").count()
        assert expected >= 3, f"the report has {expected} figure divs; ok_metrics gives accuracy, sparsity, storage"
        page.wait_for_function(
            "n => document.querySelectorAll('.plotly-graph-div.js-plotly-plot .main-svg').length >= n",
            arg=expected, timeout=deadline.ms(20))
        figures = page.locator(".plotly-graph-div").evaluate_all(
            "divs => divs.map(gd => ({id: gd.id, traces: (gd.data || []).length, title: gd.layout?.title?.text || '',"
            " bars: gd.querySelectorAll('.barlayer .trace path').length}))")
        empty = [f for f in figures if not f["traces"] or not f["bars"]]
        assert not empty, f"figures without drawn data: {empty}"
        assert page.locator("h2.failed").count() == 1, "the failed run is not in the report's Failures section"
        save_screenshot(page, "report", full_page=True)
        page.console.check("report.html")
        print(f"report: {len(figures)} plotly figures rendered: " + "; ".join(f["title"] for f in figures))
    except BaseException:
        save_screenshot(page, "report-failure", full_page=True)
        raise
