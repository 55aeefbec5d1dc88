# edgefleet: every entry point a contributor or CI uses.
# Quick start: `make demo`, then `make test`.

SHELL := /bin/bash
DEVICES ?= 3
LAB := e2e/lab
CARGO ?= cargo

# Helm v4's own engine from PyPI (helm-python-sdk), in a virtualenv cached by version.
HELM_PY_VERSION := 0.2.2
PYYAML_VERSION := 6.0.4
HELM_PY := $(HOME)/.cache/edgefleet/helm-python-sdk-$(HELM_PY_VERSION)-pyyaml-$(PYYAML_VERSION)
$(HELM_PY)/bin/python:
	python3 -m venv $(HELM_PY).tmp
	$(HELM_PY).tmp/bin/pip install -q helm-python-sdk==$(HELM_PY_VERSION) pyyaml==$(PYYAML_VERSION)
	rm -rf $(HELM_PY) && mv $(HELM_PY).tmp $(HELM_PY)

.PHONY: help demo demo-down test lint fmt fmt-check clippy shellcheck crd-check chart-check fresh-check generate unit e2e images lab-up lab-down lab-status bench bench-csr bench-fleet tools

help:
	@echo "make demo        start the lab fleet, install edgefleet with Helm, roll out examples/"
	@echo "make demo-down   stop the lab fleet and remove everything the demo made"
	@echo "make test        lint, unit tests, and end-to-end tests on the lab"
	@echo "make lab-up      start the lab (DEVICES=$(DEVICES))"
	@echo "make lab-down    stop the lab and remove its state"
	@echo "make bench       print figures: resolve speed, hub messaging, lab start and memory, controller memory"
	@echo "make bench-fleet N hollow devices running the real agent: rollout times and costs, a controller restart (N=$(N) LEASE=$(LEASE) s OFFLINE=$(OFFLINE) intervals BUDGET=$(BUDGET) renewals/s AUTHZ=$(AUTHZ): rbac or webhook, PROTOCOL=$(PROTOCOL): http1 or http2, CONCURRENCY=$(or $(CONCURRENCY),default), PRIORITY=$(PRIORITY): on or off, lab up)"

# The lab fleet, the images loaded into it, edgefleet installed with Helm (controller and
# the bootstrap that joins every device), examples/ applied and waited for. Run again, it
# rebuilds what changed and upgrades in place.
demo: tools $(HELM_PY)/bin/python
	$(LAB) up --devices $(DEVICES)
	e2e/build-images --load
	HELM_PY=$(HELM_PY) $(CARGO) run --locked -p edgefleet-e2e --bin demo

# Everything the demo made lives in the lab (its cluster and devices): taking it down
# removes it all. The caches under ~/.cache/edgefleet stay.
demo-down: lab-down

# Debian tools the build and checks use (protoc for the agent's CRI bindings, podman for
# the images); the lab installs its own packages itself.
TOOLS := shellcheck protobuf-compiler podman mosquitto-clients
tools:
	@missing=$$(for p in $(TOOLS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "make tools: installing $$missing"; \
	  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; \
	fi

test: lint unit e2e

lint: fmt-check clippy shellcheck crd-check chart-check fresh-check

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy: tools
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

shellcheck: tools
	shellcheck -x $(LAB) e2e/run-e2e e2e/bench-lab e2e/bench-controller e2e/bench-agent e2e/build-images e2e/check-fresh e2e/bench-csr-flood e2e/bench-hub e2e/bench-fleet .ci/run

# The CRD YAML is generated from the types in crds/ and never edited by hand.
CRD_DIRS := crds charts/edgefleet-crds/templates
generate:
	$(CARGO) run -q -p edgefleet-crds --bin crdgen -- $(CRD_DIRS)

crd-check:
	$(CARGO) run -q -p edgefleet-crds --bin crdgen -- --check $(CRD_DIRS)

# The lab's commands answer on a machine without the lab's packages (a fresh CI machine).
fresh-check:
	e2e/check-fresh

# Lint, render and the values schema of both charts; the CRD chart against crds/.
chart-check: $(HELM_PY)/bin/python
	$(HELM_PY)/bin/python charts/tests/test_charts.py

unit: tools
	$(CARGO) test --workspace --locked

# Starts the lab, runs the tests that need it, and stops it again whatever happened.
e2e: tools $(HELM_PY)/bin/python
	HELM_PY=$(HELM_PY) e2e/run-e2e --devices $(DEVICES)

# The controller, agent, hub and sample module images, built locally with podman
# (target/images/); the hub from NATS's own Go module at a pinned release.
images: tools
	e2e/build-images

lab-up:
	$(LAB) up --devices $(DEVICES)

lab-down:
	$(LAB) down

lab-status:
	$(LAB) status

# Figures, not assertions: resolve 10,000 devices (pure), then the lab (warm start, memory
# per device), the agent's footprint on a device, and the controller's memory with a
# simulated fleet of BENCH_DEVICES (3,000 by default, what a CI run affords; 10,000 takes
# this machine more than 15 minutes to register today), and BENCH_HOLLOW hollow devices
# running the real agent through a rollout, two changes and a controller restart (make
# bench-fleet's figures, with the chart's defaults; larger fleets: make bench-fleet N=...).
BENCH_DEVICES ?= 3000
BENCH_HOLLOW ?= 300
bench: tools $(HELM_PY)/bin/python
	$(CARGO) bench -p edgefleet-controller --bench resolve
	e2e/bench-hub
	HELM_PY=$(HELM_PY) e2e/bench-lab --devices $(DEVICES) --fleet $(BENCH_DEVICES) \
	  --hollow $(BENCH_HOLLOW)

# N hollow devices, each running the real agent loop under its own identity, against the
# real controller and apiserver: registration, an all-at-once and a staged change, timed to
# 50/99/100 % Ready, with the apiserver's writes and 429s and everyone's CPU and memory;
# then a controller restart (its relist of the fleet: time, writes, memory).
# Needs the lab: make lab-up.
N ?= 100
LEASE ?= 10
AUTHZ ?= rbac
PROTOCOL ?= http1
# Empty: the controller's default.
CONCURRENCY ?=
PRIORITY ?= on
OFFLINE ?= 4
BUDGET ?= 100
bench-fleet: $(HELM_PY)/bin/python
	HELM_PY=$(HELM_PY) e2e/bench-fleet --devices $(N) --lease-interval $(LEASE) --offline-intervals $(OFFLINE) \
	  --renewal-budget $(BUDGET) \
	  --device-authorization $(AUTHZ) --apiserver-protocol $(PROTOCOL) $(if $(CONCURRENCY),--concurrency $(CONCURRENCY)) \
	  --api-priority $(PRIORITY)

# The controller's RSS before and after 3,000 certificate requests that are not edgefleet's
# (it must stay flat). Needs the lab: make lab-up.
bench-csr:
	e2e/bench-csr-flood --count 3000
