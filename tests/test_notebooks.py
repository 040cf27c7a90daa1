"""The lab's notebooks: each has a text source in sync with its .ipynb, one shape, no committed
outputs; each runs end to end with smoke=True and stops in its first cells on a bad parameter,
naming it.

Notebooks are found by glob (notebooks/*.ipynb), so a new notebook is tested as soon as it
exists. Each run gets its own temporary output_dir; a smoke run must leave a metrics.json with
result rows, and the CSV tables and HTML figures it writes.
"""

import json
import re
from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SHAPE = ["## Setup", "## Run", "## Look", "## What we learned", "## Try it yourself"]
"""The headings every notebook has, in this order, after its title and **Goal.** (d2l's chapter shape)."""


def _execute(notebook: Path, output_dir: Path, **parameters):
    import papermill

    from piggylab.batch import ensure_kernel

    return papermill.execute_notebook(str(notebook), str(output_dir / "executed.ipynb"),
                                      parameters={"output_dir": str(output_dir), **parameters},
                                      kernel_name=ensure_kernel(), cwd=str(notebook.parent), progress_bar=False)


def _parameters(notebook: Path) -> str:
    cells = [c for c in nbformat.read(notebook, 4).cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{notebook.name} must have exactly one cell tagged 'parameters'"
    return cells[0].source


def test_notebooks_are_found():
    names = [n.stem for n in NOTEBOOKS]
    for expected in ("00_pretrain_backbone", "01_quickstart", "02_init_schemes", "03_ternary_vs_binary",
                     "04_batchnorm_adaptation", "05_sparsity", "06_multitask", "07_explorer", "08_baselines"):
        assert expected in names
    assert not (ROOT / "scripts" / "make_notebooks.py").exists(), "the notebook sources are the .py files"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
def test_committed_without_outputs(notebook):
    nb = nbformat.read(notebook, 4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{notebook.name}: a code cell has outputs"
            assert cell.execution_count is None, f"{notebook.name}: a code cell has an execution count"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
def test_has_smoke_and_output_dir_parameters(notebook):
    source = _parameters(notebook)
    assert re.search(r"^smoke = False\b", source, re.M), f"{notebook.name}: no 'smoke = False' parameter"
    assert re.search(r"^output_dir = ", source, re.M), f"{notebook.name}: no 'output_dir' parameter"


def _cells(nb) -> list[tuple[str, str, list[str]]]:
    return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
def test_text_source_in_sync(notebook):
    source = notebook.with_suffix(".py")
    assert source.exists(), f"{notebook.name} has no text source {source.name} (jupytext percent format)"
    text = jupytext.read(source)
    assert text.metadata["jupytext"]["formats"] == "ipynb,py:percent", f"{source.name} is not paired with its .ipynb"
    assert _cells(text) == _cells(nbformat.read(notebook, 4)), (
        f"{notebook.name} differs from {source.name}: run `make notebooks` after editing the .py file")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
def test_one_shape(notebook):
    cells = nbformat.read(notebook, 4).cells
    title = cells[0].source
    assert re.match(rf"# {notebook.stem[:2]} · ", title) and "**Goal.**" in title, f"{notebook.name}: title and Goal"
    headings = [line for c in cells if c.cell_type == "markdown" for line in c.source.splitlines()
                if line.startswith("## ")]
    assert [h for h in headings if h in SHAPE] == SHAPE, f"{notebook.name}: sections {headings}, expected {SHAPE}"
    parameters = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    setup = next(i for i, c in enumerate(cells) if c.source.startswith("## Setup"))
    assert parameters and parameters[0] > setup, f"{notebook.name}: the parameters cell belongs to Setup"
    check = cells[parameters[0] + 1]
    assert check.cell_type == "code" and "pl.Lab(" in check.source, (
        f"{notebook.name}: the cell after the parameters must check them (pl.Lab)")
    learned = next(i for i, c in enumerate(cells) if c.source.startswith("## What we learned"))
    code = next(c for c in cells[learned:] if c.cell_type == "code")
    assert "lab.learned(" in code.source and "lab.finish(" in code.source, f"{notebook.name}: What we learned"
    exercises = re.findall(r"^\d\. \*\*", cells[-1].source, re.M)
    assert cells[-1].source.startswith("## Try it yourself") and 2 <= len(exercises) <= 3, (
        f"{notebook.name}: end with two or three exercises under 'Try it yourself'")


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
def test_smoke_run(notebook, tmp_path):
    _execute(notebook, tmp_path, smoke=True)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["notebook"] == notebook.stem
    assert metrics["parameters"]["smoke"] is True
    assert metrics["results"], "metrics.json has no result rows"
    for row in metrics["results"]:
        assert isinstance(row["task"], str) and isinstance(row["method"], str)
        assert isinstance(row["accuracy"], float) and 0.0 <= row["accuracy"] <= 1.0
    assert metrics["timings"]["total_s"] > 0
    assert list(tmp_path.glob("*.csv")), "no table written"
    figures = list(tmp_path.glob("*.html"))
    assert figures, "no figure written"
    assert all(f.stat().st_size > 1000 for f in figures)
    if notebook.stem == "00_pretrain_backbone":
        assert (tmp_path / "tiny_resnet.safetensors").exists()  # a smoke run never touches data/
    executed = nbformat.read(tmp_path / "executed.ipynb", 4)
    closing = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs
               if "text/markdown" in o.get("data", {})]
    assert closing, "no computed 'What we learned' text"
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left behind"


BAD_PARAMETERS = {
    "01_quickstart": {"task": "imagenet"},
    "02_init_schemes": {"inits": ["constant", "gaussian"]},
    "03_ternary_vs_binary": {"mask_kinds": ["binary", "quaternary"]},
    "04_batchnorm_adaptation": {"with_finetune": "yes"},
    "05_sparsity": {"thresholds": [5e-3, -1]},
    "06_multitask": {"baselines": ["packnet"]},
    "07_explorer": {"methods": ["piggyback", "lora"]},
    "08_baselines": {"init_tasks": ["imagenet"]},
    "09_many_tasks": {"tasks_in_memory": 0},
}
"""A wrong value per notebook; any other notebook gets ``epochs="three"``."""


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
def test_bad_parameter_stops_early_naming_it(notebook, tmp_path):
    import papermill

    bad = BAD_PARAMETERS.get(notebook.stem, {"epochs": "three"})
    name = next(iter(bad))
    if not re.search(rf"^{name} = ", _parameters(notebook), re.M):
        pytest.skip(f"{notebook.name} has no parameter {name!r}")
    with pytest.raises(papermill.PapermillExecutionError) as error:
        _execute(notebook, tmp_path, smoke=True, **bad)
    assert error.value.ename == "ParameterError"
    assert repr(name) in error.value.evalue, error.value.evalue
    code = [c for c in nbformat.read(tmp_path / "executed.ipynb", 4).cells if c.cell_type == "code"]
    injected = next(i for i, c in enumerate(code) if "injected-parameters" in c.metadata.get("tags", []))
    failed = [i for i, c in enumerate(code) if any(o.output_type == "error" for o in c.outputs)]
    assert failed == [injected + 1], "the parameter check must be the cell right after the parameters"
    assert not (tmp_path / "metrics.json").exists()
