"""The lab's notebooks: each runs end to end with smoke=True, is committed without outputs,
and stops in its first cells on a bad parameter, naming it.

Notebooks are found by glob (notebooks/*.ipynb), so a new notebook is tested as soon as it
exists. Each run gets its own temporary output_dir; a smoke run must leave a metrics.json with
result rows, and the CSV tables and HTML figures it writes.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


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
                     "04_batchnorm_adaptation", "05_sparsity", "06_multitask"):
        assert expected in names


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


def test_generated_notebooks_match_their_script():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_notebooks.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


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


BAD_PARAMETERS = {
    "01_quickstart": {"dataset": "imagenet"},
    "02_init_schemes": {"inits": ["constant", "gaussian"]},
    "03_ternary_vs_binary": {"mask_kinds": ["binary", "quaternary"]},
    "04_batchnorm_adaptation": {"with_finetune": "yes"},
    "05_sparsity": {"thresholds": [5e-3, -1]},
    "06_multitask": {"baselines": ["packnet"]},
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
