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
	$(BIN)/pip install --quiet -e ".[dev,export,ray]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/sfseg demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

# ToyCity calibration numbers (docs/toycity.md); tens of minutes.
calibrate: $(STAMP)
	$(BIN)/sfseg toycity calibrate --data-dir data --out runs/suite --seeds 0 1 2 --jobs 2

# The fresh test of docs/RESULTS.md: test worlds 0, 2, 3 of every variant, three seeds, both backbones
# (many hours on 2 cores; --resume picks up where a stopped run left off).
SUITE_METHODS ?= source_only adabn tent naive_st cbst ld ldbe ld_balanced recommended oracle
MIT_METHODS ?= source_only adabn tent naive_st ld ldbe ld_balanced recommended oracle
SUITE = $(BIN)/sfseg bench toycity --variants materials small_objects fog --worlds 0 2 3 --seeds 0 1 2 \
	--data-dir data --jobs 2 --resume
results: $(STAMP)
	$(SUITE) --out runs/suite --methods $(SUITE_METHODS)
	$(SUITE) --out runs/suite-mit --configs configs/toycity/mit --methods $(MIT_METHODS)

clean:
	rm -rf $(VENV) runs
