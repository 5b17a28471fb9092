# Two entry points for a fresh machine; each creates .venv and installs what it needs.
#   make demo   - open IEL Studio on the bundled sample data
#   make test   - run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
# Any torch >= 2.4 works; 2.13.0 is preferred because its CPU build installs quickly.
TORCH_SPEC ?= torch==2.13.0
# Extras: dev (tests), medical (DICOM/NIfTI readers), bench (cleanlab, matplotlib) so that
# no test is skipped for a missing optional package.
EXTRAS ?= dev,medical,bench
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean-venv bench

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -c "import torch" 2>/dev/null || \
	  $(VENV)/bin/python -m pip install -q "$(TORCH_SPEC)" || \
	  $(VENV)/bin/python -m pip install -q "torch>=2.4"
	$(VENV)/bin/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ielstudio demo

test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/quality.py --quick
	$(VENV)/bin/python benchmarks/speed.py

clean-venv:
	rm -rf $(VENV)
