# OpenFANG — every target sets up what it needs first (a fresh clone with Python 3.11 is enough).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NODE_CLIENT := examples/node-client
DATA_DIR ?= $(CURDIR)/.openfang-data

.PHONY: install run test test-deps lint typecheck check generate bench bench-peers bench-scale guests clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,embed,tools,tui,http,sqlite]'
	touch $(STAMP)

# The Node.js example client proves PROTOCOL.md is enough to write a client; its test needs its packages.
NODE_STAMP := $(if $(wildcard $(NODE_CLIENT)/package.json),$(NODE_CLIENT)/node_modules/.installed)
$(NODE_CLIENT)/node_modules/.installed: $(NODE_CLIENT)/package.json
	cd $(NODE_CLIENT) && npm install --no-audit --no-fund --silent && touch node_modules/.installed

# The HTTP tests' npm tools: the MCP conformance kit (with the Node 22 it needs) and the reference MCP server.
HTTP_NPM := tests/http/npm
$(HTTP_NPM)/node_modules/.installed: $(HTTP_NPM)/package.json
	cd $(HTTP_NPM) && npm install --no-audit --no-fund --silent && touch node_modules/.installed

# The package's own folders (openfang/ links the others; compileall does not follow links).
SRC_DIRS := openfang supervisor control workers protocol memory security

# An editable install has no .pyc files (pip compiles only what a wheel installs), and where
# PYTHONDONTWRITEBYTECODE is set every daemon, worker module and CLI start would compile ~80 modules from source
# again (~150 ms of a cold start): compile them here, as a wheel install does. Up to date, this takes ~50 ms.
# The built-in guests are compiled too (<venv>/share/openfang/modules): a fresh data dir's first spawn maps them
# instead of compiling (workers/sandbox/shipped.py).
install: $(STAMP) $(NODE_STAMP) $(HTTP_NPM)/node_modules/.installed
	@$(PY) -m compileall -q $(SRC_DIRS)
	@$(PY) -m openfang.workers.sandbox.shipped >/dev/null

run: install
	$(PY) -m openfang.demo --data-dir $(DATA_DIR)

# Debian tools some tests drive for real (the shell_exec sandbox; tmux for `openfang top`; systemd-analyze for
# the systemd unit's test; chromium and its driver for the dashboard's browser test): installed when missing, so CI
# never skips. Each entry is "command:package".
# An entry starting with / is a path that must exist (a package without a command).
TEST_TOOLS := bwrap:bubblewrap prlimit:util-linux tmux:tmux systemd-analyze:systemd \
	clang:clang wasm-ld:lld /usr/bin/rustc:rustc /usr/lib/rustlib/wasm32-unknown-unknown:libstd-rust-dev-wasm32 \
	chromium:chromium chromedriver:chromium-driver
test-deps:
	@missing=""; for t in $(TEST_TOOLS); do c=$${t%%:*}; \
	  case $$c in /*) test -e $$c ;; *) command -v $$c >/dev/null 2>&1 ;; esac || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi

test: install test-deps
	$(PY) -m pytest -n auto -q

# openfang/ links each subpackage folder (openfang/protocol -> ../protocol), so from the repo root mypy, editors
# and the interpreter all see the one package the wheel installs.
typecheck: install
	$(VENV)/bin/mypy -p openfang

lint: install
	$(VENV)/bin/ruff check $(SRC_DIRS) tests perf
	$(VENV)/bin/ruff format --check $(SRC_DIRS) tests perf
	$(MAKE) typecheck

check: lint test

# The generated files, after a change to what they are made from (each has a test that fails when it is stale):
# PROTOCOL.md's reference (the catalogue), the tool index, the injection cue table, and last the precompiled
# dataclass methods (every dataclass of the package, so after the others' modules are as they will be).
generate: install
	$(PY) -m openfang.protocol._docgen --write
	$(PY) -m openfang.workers.tools._index_gen --write
	$(PY) -m openfang.security._injection_table_gen --write
	$(PY) -m openfang._precompiled_gen --write

bench: install
	$(PY) -m perf.run --out perf/results

bench-peers: install
	$(PY) -m perf.peers.setup
	$(PY) -m perf.run --peers --out perf/results

# The scaling benchmark to 100,000 agents and the registry at 1,000,000 rows (~15-25 min on 2 cores).
bench-scale: install
	OPENFANG_BENCH_SCALE=1000000 $(PY) -m perf.run --only scale --timeout 3600 --out perf/results

# Example guests in C and Rust (the built-in LLM agent is WAT and needs no toolchain). The built .wasm files
# are checked in; tests rebuild and compare them byte for byte whenever these Debian toolchains are present.
GUEST_TOOLS := clang lld rustc libstd-rust-dev-wasm32
guests:
	@command -v clang >/dev/null && command -v wasm-ld >/dev/null && test -x /usr/bin/rustc || \
	  { apt-get update -qq && apt-get install -y -qq --no-install-recommends $(GUEST_TOOLS); }
	clang --target=wasm32 -nostdlib -O2 -Wl,--no-entry -Wl,--export-dynamic \
	  -o examples/agents/c/upper.wasm examples/agents/c/upper.c
	/usr/bin/rustc --target wasm32-unknown-unknown --crate-type cdylib -O -C strip=symbols \
	  -o examples/agents/rust/counter.wasm examples/agents/rust/counter.rs

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache $(DATA_DIR)
