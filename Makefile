# piggylab: `make demo` runs the embedded reproduction, `make test` the whole test suite.
# Both create .venv when it is missing and install the project into it.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
GRID   ?= grids/embedded.yaml

.PHONY: install demo test lab backbone bench clean browser-deps notebooks

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (piggylab)" >/dev/null
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m piggylab.cli batch $(GRID)

test: install browser-deps
	$(PY) -m pytest

# Debian's Chromium for tests/test_browser.py (apt-get, once); without apt-get that test skips, except on CI.
browser-deps:
	@sh scripts/install_chromium.sh

# The notebooks' sources are the jupytext text files notebooks/*.py; this rewrites their paired .ipynb.
notebooks: install
	$(VENV)/bin/jupytext --quiet --to ipynb --update notebooks/[0-9]*.py

lab: install
	$(VENV)/bin/jupyter lab notebooks

backbone: install
	$(PY) -m piggylab.pretrain

bench: install
	$(PY) -m piggylab.bench

clean:
	rm -rf runs .pytest_cache
