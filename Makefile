# Every target creates and uses .venv itself; the stamp makes a second run skip the install.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.xfer-installed

# `make export` knobs (README: "Export a model version").
DATA ?= demo-data/digits
BOTTLENECKS ?=
BACKBONE ?= mobilenet_v2
WEIGHTS ?= imagenet
EPOCHS ?= 20
IMAGE_SIZE ?=
MODEL_NAME ?= classifier
MODEL_BASE_PATH ?= models/$(MODEL_NAME)
EXPORT_ARGS ?=

# `make bottlenecks` output directory and extra Beam flags.
OUTPUT ?= out/bottlenecks
BEAM_ARGS ?=

# `make demo` output directory.
OUT ?= out/demo

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv test lint pytest demo export bottlenecks bench clean

venv: $(STAMP)

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

pytest: $(STAMP)
	$(BIN)/python -m pytest

test: lint pytest

export: $(STAMP)
	$(BIN)/xfer-export $(if $(BOTTLENECKS),--bottlenecks $(BOTTLENECKS),--data $(DATA) \
		--backbone $(BACKBONE) --weights $(WEIGHTS) $(if $(IMAGE_SIZE),--image-size $(IMAGE_SIZE))) \
		--epochs $(EPOCHS) --model-name $(MODEL_NAME) --model-base-path $(MODEL_BASE_PATH) \
		$(EXPORT_ARGS)

# Bottleneck features with the Beam job (DirectRunner here; add Dataflow flags via BEAM_ARGS).
bottlenecks: $(STAMP)
	$(BIN)/xfer-bottlenecks --input $(DATA) --output $(OUTPUT) --backbone $(BACKBONE) \
		--weights $(WEIGHTS) $(if $(IMAGE_SIZE),--image_size $(IMAGE_SIZE)) $(BEAM_ARGS)

demo: $(STAMP)
	bash scripts/demo.sh $(OUT)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

# Benchmarks: ratios measured in one run, written to bench-results.json (never asserted in tests).
bench: $(STAMP)
	$(BIN)/python bench/beam_bench.py
