# ganops — every target works on a fresh machine: `install` builds the environment it needs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
# torch first, pinned (from PyPI: the CUDA 13 build, which runs on CPU); the extras never ask for torch.
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install system-deps controlplane demo test lint bench gpu-check manifests chart images clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[trainer,operator,serving,local,dev]'
	$(PIP) install -q --no-deps invisible-watermark==0.2.0
	touch $(STAMP)

# Debian's prometheus/promtool for the tests that scrape real runs (root on these machines; skipped if present).
system-deps:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

# The real Kubernetes control plane that tests/integration/controlplane runs against: kube-apiserver,
# kube-controller-manager, kube-scheduler and kubectl from the k8s.io/kubernetes module, etcd and helm from theirs
# (versions in tools/controlplane/versions.env), built once into a cache outside the clone,
# ${XDG_CACHE_HOME:-~/.cache}/ganops/controlplane/<versions>/bin. Needs Go (1.26) and the Go module proxy; cold it
# takes a while on two cores (docs/development.md has the numbers), when built it returns at once. `make test` does
# not build it: where it is missing those tests skip, saying so (GANOPS_CONTROLPLANE=required makes that a failure).
controlplane:
	bash tools/controlplane/build.sh

# Trains the digits example from scratch, evaluates it at steps 500, 1000 and 1500, promotes the best checkpoint
# through its gates (maxFID 60) to digits@production in a local MLflow (sqlite under $(DEMO_HOME)) and writes the
# promoted sample grid. One torch thread: this small model gains little from a second one, and on a shared machine
# two threads fighting for a busy core were 6x slower (4 min with one thread at load 8, about 1 min when quiet).
# Then scripts/serve_demo.py serves digits@production with `ganops serve` on 127.0.0.1, fetches one grid through
# POST /v1/generate with a demo API key, saves it as $(DEMO_HOME)/served-grid.png and stops the server.
DEMO_HOME ?= .ganops/demo
DEMO_THREADS ?= 1
demo: install
	rm -rf $(DEMO_HOME)
	OMP_NUM_THREADS=$(DEMO_THREADS) $(VENV)/bin/ganops run manifests/examples/digits.yaml --home $(DEMO_HOME)
	@echo
	OMP_NUM_THREADS=$(DEMO_THREADS) $(PY) -m scripts.serve_demo --home $(DEMO_HOME)
	@echo
	@echo "look closer:  $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(DEMO_HOME)/mlflow.db   (runs, grids, registry)"
	@echo "              $(VENV)/bin/ganops promote manifests/examples/digits.yaml --home $(DEMO_HOME)   (judge again)"
	@echo "              $(VENV)/bin/ganops serve --model digits@production --home $(DEMO_HOME)   (serve it: http://127.0.0.1:8080/docs)"

test: install system-deps
	$(PY) -m pytest -q $(PYTEST_ARGS)

# ruff, mypy --strict, and the layer map (docs/architecture.md; contracts in pyproject.toml) with import-linter.
lint: install
	$(VENV)/bin/ruff check src tests benchmarks scripts dashboards
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

bench: install
	$(PY) -m benchmarks.train_throughput
	$(PY) -m benchmarks.toy_modes

# The operator at 25 and 50 GanTrainingJob creates/s: on the real control plane (make controlplane) and, as the
# baseline in the same run, on the emulator; reports/operator_scale.{md,json} (about 10 min on two busy cores).
.PHONY: bench-operator
bench-operator: install controlplane
	$(PY) -m benchmarks.operator_scale --jobs 500 --rates 25 50 --backends emulator controlplane

# Is the trainer correct and fast on this GPU? ≤ 10 minutes on one data-centre GPU, no network: DCGAN 64×64 at
# fp32/bf16/fp16 against a bare loop doing the same work (R1), host↔device syncs per step, peak memory, GradScaler
# skips, bitwise resume, SIGTERM under torchrun, Inception evaluation, serving on the GPU vs the CPU; writes
# reports/gpu.md and reports/gpu.json (docs/gpu.md). Install the CUDA torch first, e.g.
#   make gpu-check TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
# GPU_CHECK_ARGS=--tiny runs it at toy sizes on a CPU (what `make test` does, tests/unit/trainer/test_gpu_check.py).
GPU_CHECK_ARGS ?=
gpu-check: install
	$(PY) -m benchmarks.gpu_check $(GPU_CHECK_ARGS)

# The CRD from the pydantic model, then everything generated from the chart (scripts/chart.py): the chart's copy
# of the CRD, values.schema.json from values.yaml, and manifests/{operator,serving,monitoring} + kustomization.yaml.
manifests: install
	$(VENV)/bin/ganops crd -o manifests/crd/ganops.io_gantrainingjobs.yaml
	$(PY) -m scripts.chart

# The Helm chart's checks (lint, render, validate, security, drift) through the real Helm engine (helm-python-sdk).
chart: install
	$(PY) -m scripts.chart --check
	$(PY) -m pytest -q tests/unit/chart/

# The operator, trainer and serving images (docs/install.md, "Images"): with Docker where an engine answers (the
# published bases and PyTorch's indexes), else with Debian's buildah (installed when missing) on a local Debian
# bookworm + python3.11 base that is built once and cached in ~/.cache/ganops/images, torch from PyPI pinned in
# images/locks/. Tagged <registry>/<image>:<version> and :<version>-<revision>. Standard library only: no venv needed.
# TORCH_WHEELS=<dir> takes torch from a local wheel directory; IMAGES_PRUNE=1 drops the layer cache afterwards (CI).
IMAGE_REGISTRY ?= ghcr.io/ganops
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGES ?= operator trainer serving
IMAGES_ENV = IMAGE_REGISTRY=$(IMAGE_REGISTRY) IMAGE_TAG=$(IMAGE_TAG)
.PHONY: lock images images-test images-clean
images:
	$(IMAGES_ENV) python3 -m scripts.images.build $(IMAGES)

# The images' pinned, hashed requirements (images/locks/*.lock): uv pip compile against PyPI. `make images` refuses
# locks that no longer match pyproject.toml.
lock:
	python3 -m scripts.images.lock

# Each built image inspected and run as the chart runs it (tests/images/test_images.py: read-only root, uid 10001,
# the operator reconciling a job in the Kubernetes API emulator, the trainer training it into moto's S3 and a real
# MLflow, serving answering with watermarked images), then reports/images.md and reports/images.json.
IMAGES_TEST_DEPS ?= install
images-test: $(IMAGES_TEST_DEPS)
	status=0; $(IMAGES_ENV) GANOPS_IMAGES="$(IMAGES)" GANOPS_IMAGE_TESTS=1 $(PY) -m pytest -q --basetemp=.ganops/images/pytest tests/images $(PYTEST_ARGS) \
	  || status=$$?; $(PY) -m scripts.images.report; exit $$status

# Removes the three images, build containers and the layer cache (the cached base image stays).
images-clean:
	python3 -m scripts.images.build --clean

# Fault injection at full size - 100 SIGKILLs of the trainer, preemptions through the operator, S3 errors and MLflow
# restarts mid-training, operator SIGKILLs, serving under bad promotions and an MLflow outage - plus the bad-input
# corpus and the attacks of issue 13 (serving edge, tenancy: the report's "Attacks" section); writes
# reports/resilience.md and reports/resilience.json. `make test` runs the same tests at fast sizes.
.PHONY: resilience
resilience: install
	GANOPS_RESILIENCE=full GANOPS_RESILIENCE_REPORT=reports/resilience OMP_NUM_THREADS=1 \
	  $(PY) -m pytest -q -p tests.resilience.report tests/resilience tests/integration/test_attacks_tenancy.py \
	  tests/badinput $(PYTEST_ARGS)

clean:
	rm -rf .ganops reports/*.tmp
