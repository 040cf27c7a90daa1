"""End to end, the way users work: a real JupyterLab server driven by a real browser (Chromium).

1. ``jupyter lab --no-browser`` on a free localhost port with a random token, serving a temporary
   copy of ``notebooks/`` in which notebook 07's parameters cell says ``smoke = True``;
2. Chromium (Debian's, through Playwright) opens ``07_explorer.ipynb``, runs all cells from the
   Run menu and waits for the explorer's widgets and the notebook's own runs and sweep;
3. it changes the task, the mask kind and the epochs (many: a long run), clicks Train, watches
   the live curve grow while the kernel stays idle (the run trains in a background thread),
   takes a screenshot mid-run, clicks Stop and measures how long the status line takes to say
   ``stopped`` (written to ``test-artifacts/browser/stop_latency.json``);
4. it sets up a 2 x 2 sweep on the sweep controls, clicks Sweep and watches both heatmaps fill,
   cell by cell, up to four cells; a screenshot of the finished sweep;
5. it reloads the tab, as users do, and checks that the figures come back as they were;
6. it restarts the kernel (clearing the outputs), runs the cells up to the explorer again and
   checks that the new explorer shows the runs table as it was, the stopped run included;
7. the batch runner (``piggylab batch``) runs a small grid of the fixture notebooks and Chromium
   opens its ``report.html`` from disk, checking that every plotly figure rendered.

Screenshots go to ``test-artifacts/browser/`` (also on failure), and any JavaScript error in the
console fails the test (the few allowed ones are listed below, each with its reason). The server
and the browser are stopped however a test ends. The module must stay under three minutes: every
wait takes its timeout from one shared budget (`BUDGET_S`).
Chromium comes from ``scripts/install_chromium.sh`` (``make test`` runs it); without apt-get
the tests skip, except on CI (``$CI`` set), where they fail.
"""

from __future__ import annotations

import json
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
    """A copy of ``notebooks/`` where notebook 07 runs with ``smoke = True``; returns the folder.

    The copy leaves out the notebooks' jupytext text sources: JupyterLab's jupytext contents
    manager would refuse to open an .ipynb edited after its paired .py (it saves one on Ctrl+S).
    """
    shutil.copytree(ROOT / "notebooks", dest, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "runs", "*.py"))
    path = dest / NOTEBOOK
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert cells, f"{NOTEBOOK} has no cell tagged 'parameters'"
    source, count = re.subn(r"(?m)^smoke\s*=\s*\w+", "smoke = True", cells[0].source)
    assert count == 1, f"{NOTEBOOK}'s parameters cell has no `smoke = ...` line"
    cells[0].source = source
    nbformat.write(nb, path)
    return dest


def code_cells(path: Path) -> list[str]:
    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


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


def menu(page, top: str, item: str) -> None:
    """Choose `item` from the menu bar's `top` menu, as a user would."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(rf"^{top}$")).click()
    page.locator(".lm-Menu-item:visible .lm-Menu-itemLabel", has_text=re.compile(rf"^{re.escape(item)}$")).click()


CELL_STATE_JS = """() => {
    const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt')]
        .map(e => e.textContent.trim());
    const errors = [...document.querySelectorAll(
        '.jp-Notebook .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')]
        .map(e => e.textContent.slice(0, 2000));
    return {prompts, errors};
}"""


def wait_for_cells(page, done: int, deadline: Deadline, cap_s: float) -> None:
    """Until the first `done` code cells show an execution count (``[n]:``) and none is running;
    fails at once on an error output."""
    end = time.monotonic() + deadline.ms(cap_s) / 1000
    state = {}
    while time.monotonic() < end:
        accept_kernel_dialog(page)
        state = page.evaluate(CELL_STATE_JS)
        if state["errors"]:
            pytest.fail(f"{NOTEBOOK} raised while running its cells:\n" + "\n".join(state["errors"]), pytrace=False)
        prompts = state["prompts"]
        if all(re.fullmatch(r"\[\d+\]:", p) for p in prompts[:done]) and "[*]:" not in prompts:
            return
        page.wait_for_timeout(250)
    pytest.fail(f"{NOTEBOOK}'s first {done} code cells did not finish within {cap_s:.0f} s; prompts: "
                f"{state.get('prompts')}", pytrace=False)


FIGURE_JS = """gd => ({
    traces: (gd.data || []).map(t => ({name: t.name || '', x: t.x ? t.x.length : 0,
        filled: Array.isArray(t.z) ? t.z.flat().filter(v => v !== null && v !== undefined).length : 0})),
    title: (gd.layout && gd.layout.title && gd.layout.title.text) || '',
    svgPoints: gd.querySelectorAll('.scatterlayer .trace path.point').length,
    svgBars: gd.querySelectorAll('.barlayer .trace path').length,
    heatmaps: gd.querySelectorAll('.heatmaplayer image, .hm image').length,
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


def type_into(page, container: str, text: str) -> None:
    """Type `text` into the input of the explorer part `container`, then Enter (the value reaches the kernel)."""
    field = page.locator(f"{container} input")
    field.fill(text)
    field.press("Enter")


STOP_JS = """async (limitMs) => {
    const status = document.querySelector('.piggylab-status');
    const seen = [];
    const start = performance.now();
    const ended = new Promise(resolve => {
        const observer = new MutationObserver(() => {
            const text = status.innerText.trim();
            if (seen[seen.length - 1] !== text) seen.push(text.slice(0, 60));
            if (text.startsWith('stopped')) { observer.disconnect(); resolve(performance.now() - start); }
        });
        observer.observe(status, {subtree: true, childList: true, characterData: true});
    });
    const limit = new Promise(resolve => setTimeout(() => resolve(null), limitMs));
    document.querySelector('button.piggylab-stop').click();
    return {ms: await Promise.race([ended, limit]), seen};
}"""
"""Clicks Stop; returns the milliseconds until the status line says ``stopped`` (null past `limitMs`),
the whole way (browser to kernel to the worker thread's last step, and back to the page), and the
status lines seen meanwhile."""


def show_explorer(page) -> None:
    """Scroll the notebook so that the explorer's top (controls, status, curve, sweep) fills the view."""
    page.locator(".piggylab-explorer").evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)


def runs_table(page) -> list[list[str]]:
    """The explorer's runs table as rows of cell texts."""
    return page.locator(".piggylab-runs table tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.querySelectorAll('td')].map(td => td.textContent.trim()))")


def wait_for_status(page, prefix: str, deadline: Deadline, cap_s: float) -> str:
    """Until the explorer's status line starts with `prefix`; fails at once on an error there."""
    status = page.locator(".piggylab-status")
    end = time.monotonic() + deadline.ms(cap_s) / 1000
    text = ""
    while time.monotonic() < end:
        text = status.inner_text().strip()
        if text.startswith(prefix):
            return text
        if text.startswith("error"):
            pytest.fail(f"the explorer shows an error: {text}", pytrace=False)
        page.wait_for_timeout(100)
    pytest.fail(f"the status line did not start with {prefix!r} within {cap_s:.0f} s: {text!r}", pytrace=False)


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------

def test_explorer_in_jupyterlab(page, deadline, tmp_path):
    """Notebook 07 in JupyterLab: run all; a long run, watched live and stopped; a 2 x 2 sweep; a
    page reload; a kernel restart that brings the runs table back."""
    root = smoke_copy_of_notebooks(tmp_path / "notebooks")
    cells = code_cells(root / NOTEBOOK)
    with jupyter_lab(root, tmp_path / "jupyter", start_timeout=min(60, deadline.left)) as server:
        try:
            page.goto(server.lab_url(NOTEBOOK), timeout=deadline.ms(60))
            page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=deadline.ms(60))
            wait_for_kernel_idle(page, deadline, cap_s=60)
            menu(page, "Run", "Run All Cells")
            wait_for_cells(page, len(cells), deadline, cap_s=90)
            print(f"{deadline.elapsed:.0f} s: {NOTEBOOK} ran all its cells")
            for phase in (notebook_runs, stopped_run, sweep, reload, restart):
                phase(page, deadline, *([cells] if phase is restart else []))
                print(f"{deadline.elapsed:.0f} s: {phase.__name__} passed")
            page.console.check(f"{NOTEBOOK} in JupyterLab")
        except BaseException:
            save_screenshot(page, "explorer-failure")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            (ARTIFACTS / "jupyter-lab.log").write_text(server.log_tail(200_000))
            print(f"server log: {ARTIFACTS / 'jupyter-lab.log'}")
            print("console:\n  " + "\n  ".join(page.console.messages[-50:]))
            raise
    kept = root / "runs" / "07_explorer" / "explorer"
    assert {"runs.csv", "sweep-1.csv", "sweep-2.csv"} <= {p.name for p in kept.iterdir()}, list(kept.iterdir())


def notebook_runs(page, deadline: Deadline) -> None:
    """After Run All: the widgets rendered, and the notebook's own runs and sweep reached the figures."""
    page.locator("button.piggylab-train").wait_for(state="visible", timeout=deadline.ms(10))
    page.locator(".piggylab-explorer").scroll_into_view_if_needed()
    text = page.locator(".piggylab-status").inner_text()
    assert text.startswith("done: sweep #1"), text
    curve = figure_state(page, ".piggylab-curve")
    assert points(curve) > 0 and curve["svgPoints"] > 0, f"the notebook's runs drew no curve: {curve}"
    heatmaps = figure_state(page, ".piggylab-sweep-figure")
    assert [t["filled"] for t in heatmaps["traces"]] == [4, 4], f"the notebook's sweep is not drawn: {heatmaps}"
    assert figure_state(page, ".piggylab-sparsity")["svgBars"] > 0, "no sparsity bars after the notebook's runs"
    mask = figure_state(page, ".piggylab-mask")
    assert mask["traces"] and mask["heatmaps"] > 0 and "Mask of" in mask["title"], f"no mask drawn: {mask}"
    assert len(figure_state(page, ".piggylab-growth")["traces"]) > 0, "no sparsity growth drawn"


def stopped_run(page, deadline: Deadline) -> None:
    """A long run: the curve grows while the kernel stays free; Stop ends it, timed."""
    before = figure_state(page, ".piggylab-curve")
    rows_before = len(runs_table(page))
    method = page.locator(".piggylab-method select")
    if method.input_value() != "piggyback":
        method.select_option("piggyback")
    task = pick_other_option(page.locator(".piggylab-task select"))
    mask_kind = pick_other_option(page.locator(".piggylab-mask-kind select"), prefer="ternary")
    type_into(page, ".piggylab-epochs", "100")
    page.wait_for_timeout(300)  # let the widget edits reach the kernel before the click does
    page.locator("button.piggylab-train").click()

    # The curve grows while the run trains, and the kernel is free meanwhile (the run is in a thread):
    # another cell runs (the parameters cell: harmless to run again) and gets its execution count.
    status = page.locator(".piggylab-status")
    wait_for_status(page, "training", deadline, cap_s=30)
    seen = [points(before)]
    end = time.monotonic() + deadline.ms(60) / 1000
    while time.monotonic() < end and len(set(seen[1:])) < 3:
        text = status.inner_text()
        if text.startswith("training"):
            seen.append(points(figure_state(page, ".piggylab-curve")))
        assert not text.startswith(("error", "done")), f"the long run ended by itself: {text}"
        page.wait_for_timeout(150)
    prompt = page.locator(".jp-Notebook .jp-CodeCell").first.locator(".jp-InputArea-prompt")
    count = prompt.inner_text().strip()
    prompt.click()
    page.keyboard.press("Control+Enter")
    page.wait_for_function("([el, old]) => /^\\[\\d+\\]:$/.test(el.textContent.trim()) && el.textContent.trim() !== old",
                           arg=[prompt.element_handle(), count], timeout=deadline.ms(20))
    assert status.inner_text().startswith("training"), "the run ended before the other cell ran"
    seen.append(points(figure_state(page, ".piggylab-curve")))
    growth = sorted(set(seen[1:]))
    assert len(growth) >= 3 and growth[0] > seen[0], f"the curve did not grow while the run trained: {seen}"
    assert page.locator("button.piggylab-train").is_disabled() and page.locator("button.piggylab-stop").is_enabled()
    show_explorer(page)
    save_screenshot(page, "explorer-mid-run")

    stop = page.evaluate(STOP_JS, deadline.ms(30))
    latency_ms = stop["ms"]
    assert latency_ms is not None, (f"Stop did not end the run within 30 s: {status.inner_text()!r}; status lines "
                                    f"seen: {stop['seen']}")
    text = status.inner_text().strip()
    steps = re.search(r"after step (\d+) of (\d+)", text)
    assert steps and int(steps.group(1)) < int(steps.group(2)), text
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    record = {"stop_latency_s": round(latency_ms / 1000, 3), "what": "click on Stop to the status line saying "
              "stopped, measured in the page (MutationObserver on the status line)", "status": text,
              "steps_trained": int(steps.group(1)), "steps_planned": int(steps.group(2))}
    (ARTIFACTS / "stop_latency.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"Stop latency in JupyterLab: {latency_ms / 1000:.3f} s ({text})")
    assert latency_ms < 20_000, f"Stop took {latency_ms / 1000:.1f} s"  # a sanity bound, not a target

    after = figure_state(page, ".piggylab-curve")
    loss = after["traces"][-2]
    assert f"{task} (piggyback, {mask_kind} mask)" in loss["name"], loss["name"]
    assert loss["x"] == int(steps.group(1)), (loss, text)  # every step it trained is on the curve
    rows = runs_table(page)
    assert len(rows) == rows_before + 1 and "stopped" in rows[-1], rows[-1]
    assert page.locator("button.piggylab-train").is_enabled() and page.locator("button.piggylab-stop").is_disabled()


def sweep(page, deadline: Deadline) -> None:
    """A 2 x 2 sweep set up on the widgets: both heatmaps fill, cell by cell, to four cells."""
    type_into(page, ".piggylab-epochs", "2")
    page.locator(".piggylab-knob-1 select").select_option(label="LR scores")
    type_into(page, ".piggylab-values-1", "1e-2, 5e-2")
    page.locator(".piggylab-knob-2 select").select_option(label="threshold τ")
    type_into(page, ".piggylab-values-2", "5e-3, 8e-3")
    page.wait_for_timeout(300)
    page.locator("button.piggylab-sweep").click()

    counts = []
    end = time.monotonic() + deadline.ms(90) / 1000
    while time.monotonic() < end:
        state = figure_state(page, ".piggylab-sweep-figure")
        if "Sweep #2" in state["title"]:
            counts.append(tuple(t["filled"] for t in state["traces"]))
            if counts[-1] == (4, 4) and page.locator(".piggylab-status").inner_text().startswith("done: sweep #2"):
                break
        page.wait_for_timeout(100)
    else:
        pytest.fail(f"the sweep did not fill four cells in time; filled counts seen: {counts}", pytrace=False)
    live = sorted({a for a, _ in counts if 0 < a < 4})
    assert live, f"the heatmaps did not fill in live, only at the end: counts seen {counts}"
    status = page.locator(".piggylab-status").inner_text()
    assert "lr_scores (2) × threshold (2)" in status, status
    show_explorer(page)
    save_screenshot(page, "explorer-sweep")
    print(f"sweep: cells filled as seen {sorted(set(counts))}; {status}")


def reload(page, deadline: Deadline) -> None:
    """Save and reload the tab, as users do: the explorer comes back from the running kernel's widget
    state and must show the same figures (new views start from that state, not from the messages
    that updated the old ones)."""
    before = {part: figure_state(page, part) for part in (".piggylab-curve", ".piggylab-sweep-figure",
                                                          ".piggylab-sparsity")}
    page.keyboard.press("Control+s")
    page.wait_for_function("() => !document.querySelector('.lm-TabBar-tab.jp-mod-current.jp-mod-dirty')",
                           timeout=deadline.ms(10))
    page.reload(timeout=deadline.ms(60))
    wait_for_kernel_idle(page, deadline, cap_s=60)
    for part, state in before.items():
        page.locator(f"{part} .js-plotly-plot").first.wait_for(timeout=deadline.ms(30))
        again = figure_state(page, part)
        assert (again["traces"], again["title"]) == (state["traces"], state["title"]), (
            f"after a page reload {part} is not as it was: {again} instead of {state}")


def restart(page, deadline: Deadline, cells: list[str]) -> None:
    """Restart the kernel, run the cells up to the explorer again: the runs table comes back."""
    before = runs_table(page)
    assert any("stopped" in row for row in before), before
    menu(page, "Kernel", "Restart Kernel and Clear Outputs of All Cells…")
    page.locator(".jp-Dialog .jp-mod-accept").click()
    wait_for_kernel_idle(page, deadline, cap_s=60)
    runs_cell = next(i for i, source in enumerate(cells) if "explorer.train(" in source)
    page.locator(".jp-Notebook .jp-CodeCell").nth(runs_cell).locator(".jp-InputPrompt").click()
    menu(page, "Run", "Run All Above Selected Cell")
    wait_for_cells(page, runs_cell, deadline, cap_s=60)
    page.locator(".piggylab-runs table").wait_for(timeout=deadline.ms(20))
    status = page.locator(".piggylab-status").inner_text()
    assert f"{len(before)} run(s) restored" in status, status
    assert runs_table(page) == before, "the runs table after the restart is not the one before it"


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
