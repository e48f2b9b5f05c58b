# Every target creates and uses .venv itself; the stamp makes a second run skip the install.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.xfer-installed
TORCH_VERSION ?= 2.13.0
TORCH_WHEELS ?= /opt/wheels

# `make export` knobs (docs/export.md).
DATA ?= demo-data/digits
BOTTLENECKS ?=
BACKBONE ?= mobilenet_v2
WEIGHTS ?= imagenet
EPOCHS ?= 20
IMAGE_SIZE ?=
MODEL_NAME ?= classifier
MODEL_BASE_PATH ?= models/$(MODEL_NAME)
EXPORT_ARGS ?=

# `make serve`: the local TF-Serving-compatible server on these ports.
GRPC_PORT ?= 8500
REST_PORT ?= 8501
SERVE_ARGS ?=

# `make bottlenecks` output directory and extra Beam flags.
OUTPUT ?= out/bottlenecks
BEAM_ARGS ?=

# `make demo` output directory.
OUT ?= out/demo

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv test test-fast lint docs pytest k8s-check k8s-pin-image chromium demo export serve bottlenecks bench clean

venv: $(STAMP)

# The EfficientNet-Lite0 conversion parity test needs the PyTorch reference: it is installed only
# where the CPU build of torch is on local disk (elsewhere pip would fetch a multi-GB CUDA build);
# without it those tests skip, saying why.
$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	if ls $(TORCH_WHEELS)/torch-$(TORCH_VERSION)+cpu-*.whl >/dev/null 2>&1; then \
		$(BIN)/python -m pip install --quiet 'torch==$(TORCH_VERSION)' && \
		$(BIN)/python -m pip install --quiet -e '.[torch-parity]'; fi
	touch $(STAMP)

# ruff, and the dependency rules (pyproject.toml's import-linter contracts: stage boundaries,
# export/'s layers, no import cycles).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# The documentation site: strict, so a broken link, anchor or page missing from the nav fails.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict -d build/site

# Two workers (pytest-xdist), one folder of tests/ each at a time (tests/conftest.py): the
# suite waits on subprocesses and servers as much as it computes.
PYTEST_WORKERS ?= 2
pytest: $(STAMP) chromium
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup

# For development: lint and the tests not marked slow (CI runs the full `make test`).
test-fast: lint $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

# The HTML run report's test renders it in headless Chromium (Debian's package). Installed here
# when missing and this is root on Debian; otherwise the test says how to install it (or set
# XFER_SKIP_BROWSER=1 to skip only that check).
CHROMIUM ?= /usr/bin/chromium
chromium:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for the report's browser test"; \
		(apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
		 (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null)); \
	else echo "chromium not installed: the report browser test will fail (apt-get install chromium)"; fi

# kubectl (with kustomize) is what k8s-check needs from the machine; without it the check is
# skipped with a message, everything else still runs.
test: lint docs pytest
	@if command -v kubectl >/dev/null 2>&1; then $(MAKE) --no-print-directory k8s-check; \
	else echo "k8s-check skipped: kubectl not installed"; fi

# Offline validation of the deployment: both overlays rendered with kustomize, validated
# strictly against Kubernetes $(K8S_VERSION) and by checkov; the Dockerfiles by hadolint.
# checkov's CKV_K8S_43 (image by digest) is skipped by an annotation in the Deployment: the
# overlays name a tag while they are developed, and `make k8s-pin-image` below pins the digest
# at release.
K8S_VERSION ?= 1.32.0
K8S_TOOLS := .venv-k8s
K8S_STAMP := $(K8S_TOOLS)/.installed
K8S_DIR ?= serving/k8s
RENDERED := build/k8s

$(K8S_STAMP):
	test -x $(K8S_TOOLS)/bin/python || $(PYTHON) -m venv $(K8S_TOOLS)
	$(K8S_TOOLS)/bin/python -m pip install --quiet --upgrade pip
	$(K8S_TOOLS)/bin/python -m pip install --quiet 'checkov>=3.2,<4' 'kubernetes-validate>=1.31,<2'
	touch $(K8S_STAMP)

k8s-check: $(K8S_STAMP) $(STAMP)
	rm -rf $(RENDERED) && mkdir -p $(RENDERED)
	kubectl kustomize $(K8S_DIR)/overlays/gpu > $(RENDERED)/gpu.yaml
	kubectl kustomize $(K8S_DIR)/overlays/cpu > $(RENDERED)/cpu.yaml
	$(K8S_TOOLS)/bin/kubernetes-validate --strict --quiet -k $(K8S_VERSION) $(RENDERED)/*.yaml
	BC_SKIP_MAPPING=TRUE $(K8S_TOOLS)/bin/checkov --directory $(RENDERED) --framework kubernetes \
		--skip-download --compact --quiet
	$(BIN)/hadolint serving/Dockerfile beam_jobs/Dockerfile

# Release: pin one overlay's serving image by digest (the GPU and CPU images differ), e.g.
#   make k8s-pin-image OVERLAY=gpu IMAGE=tensorflow/serving:2.21.0-gpu@sha256:<digest>
# (IMAGE may name your own registry's copy). The same as `kustomize edit set image
# tensorflow/serving=$(IMAGE)` in the overlay, and runs exactly that when the kustomize CLI is
# installed; kubectl embeds only kustomize's build, so otherwise serving/pin_image.py makes the
# edit. Commit the result with the release. A reference without a digest is refused.
OVERLAY ?=
IMAGE ?=
KUSTOMIZE ?= $(shell command -v kustomize 2>/dev/null)
k8s-pin-image:
	@test -n "$(OVERLAY)" || { echo "give OVERLAY=gpu or OVERLAY=cpu (their images differ)"; exit 2; }
	@test -n "$(IMAGE)" || { echo "give IMAGE=NAME[:TAG]@sha256:<digest>"; exit 2; }
	$(PYTHON) -m serving.pin_image --overlay $(K8S_DIR)/overlays/$(OVERLAY) \
		$(if $(KUSTOMIZE),--kustomize $(KUSTOMIZE)) '$(IMAGE)'
	@if command -v kubectl >/dev/null 2>&1; then kubectl kustomize $(K8S_DIR)/overlays/$(OVERLAY) | \
		grep -E '^ +image: '; fi

export: $(STAMP)
	$(BIN)/xfer-export $(if $(BOTTLENECKS),--bottlenecks $(BOTTLENECKS),--data $(DATA) \
		--backbone $(BACKBONE) --weights $(WEIGHTS) $(if $(IMAGE_SIZE),--image-size $(IMAGE_SIZE))) \
		--epochs $(EPOCHS) --model-name $(MODEL_NAME) --model-base-path $(MODEL_BASE_PATH) \
		$(EXPORT_ARGS)

serve: $(STAMP)
	$(BIN)/xfer-serve --port=$(GRPC_PORT) --rest_api_port=$(REST_PORT) \
		--model_name=$(MODEL_NAME) --model_base_path=$(abspath $(MODEL_BASE_PATH)) $(SERVE_ARGS)

# Bottleneck features with the Beam job (DirectRunner here; add Dataflow flags via BEAM_ARGS).
bottlenecks: $(STAMP)
	$(BIN)/xfer-bottlenecks --input $(DATA) --output $(OUTPUT) --backbone $(BACKBONE) \
		--weights $(WEIGHTS) $(if $(IMAGE_SIZE),--image_size $(IMAGE_SIZE)) $(BEAM_ARGS)

# `make demo DATA=<class folders> BACKBONE=<name>` runs the same on your own images.
demo: $(STAMP)
	$(BIN)/python scripts/demo.py --out $(OUT) --weights $(WEIGHTS) \
		$(if $(filter command line environment,$(origin DATA)),--data $(DATA)) \
		$(if $(filter command line environment,$(origin BACKBONE)),--backbone $(BACKBONE)) \
		$(if $(IMAGE_SIZE),--image-size $(IMAGE_SIZE))

clean:
	rm -rf $(VENV) $(K8S_TOOLS) build *.egg-info .pytest_cache .ruff_cache

# Benchmarks: ratios measured in one run, written to bench-results.json (never asserted in tests).
bench: $(STAMP)
	$(BIN)/python bench/beam_bench.py
	$(BIN)/python bench/serving_bench.py
	$(BIN)/python bench/batching_bench.py
	$(BIN)/python bench/client_bench.py
	$(BIN)/python bench/memory_bench.py
	$(BIN)/python bench/training_bench.py
	$(BIN)/python bench/preprocess_split_bench.py
