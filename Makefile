# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of PyTorch; override for a GPU machine, e.g. `make demo TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean results calibrate

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/sfseg demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

# ToyCity calibration numbers (docs/toycity.md) and the 3-seed table (docs/RESULTS.md); tens of minutes.
calibrate: $(STAMP)
	$(BIN)/sfseg toycity generate --out data/toycity
	$(BIN)/sfseg toycity calibrate --data data/toycity --seeds 0 1 2

RESULT_METHODS ?= source_only adabn naive_st conf_st ld_pl ld_nl ld ld_noent ld_refcode ld_bnfrozen
BASELINE_METHODS ?= ld ldbe entropy_min max_squares tent shot_im cbst tent_nl shot_im_pl
results: $(STAMP)
	$(BIN)/sfseg toycity generate --out data/toycity
	$(BIN)/sfseg bench toycity --data data/toycity --out runs/bench --seeds 0 1 2 --methods $(RESULT_METHODS)
	$(BIN)/sfseg bench toycity --data data/toycity --out runs/bench_be --source-dir runs/bench --seeds 0 1 2 --methods $(BASELINE_METHODS)

clean:
	rm -rf $(VENV) runs
