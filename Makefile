# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU build of torch by default; `make TORCH_CONSTRAINT= install` keeps a CUDA torch you installed.
TORCH_CONSTRAINT ?= -c constraints/cpu.txt
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml setup.cfg constraints/cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet $(TORCH_CONSTRAINT) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fairseg demo --out demo_output

lint: $(STAMP)
	$(BIN)/ruff check napari_fairseg tests benchmarks
	$(BIN)/lint-imports

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_metrics.py

clean:
	rm -rf $(VENV) demo_output build *.egg-info
