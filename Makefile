# Two entry points: `make run` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint browser audit

# The browser test needs Debian's Chromium; install it when missing and apt is usable (CI runs as
# root). Without it the browser test is skipped with its reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not installed and apt not usable: the browser test will be skipped"; fi; }

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# Known vulnerabilities in the installed packages, from PyPI's per-project advisories (which cover
# each project's latest release only; older versions are listed as unchecked warnings). Needs
# network: an unreachable index fails the target. Allowlist with reasons: audit-allow.toml.
audit: $(STAMP)
	$(PY) -m tools.audit_deps --json results/audit.json

# --durations: the slowest tests in every log, since the suite's 15-minute line is close on slow CPUs.
test: lint browser audit
	$(PY) -m pytest -q --durations=15

# The demo: OpenMoji from the npm registry, the committed demo weights, the page on port 8000.
DEMO_WEIGHTS := weights/zse-openmoji-demo.pt
DEMO_INDEX := data/indexes/openmoji-demo

run: install
	$(VENV)/bin/sbir demo prepare --out data/demo
	$(VENV)/bin/sbir index build --gallery data/demo/manifest.csv --checkpoint $(DEMO_WEIGHTS) --out $(DEMO_INDEX) \
	  --name openmoji-demo --skip-current
	@echo "Open http://127.0.0.1:8000 in a browser (Ctrl-C stops the server)."
	SBIR_DATA_ROOTS='["data"]' SBIR_ANN_WEIGHT=1 $(VENV)/bin/sbir serve --index $(DEMO_INDEX) --checkpoint $(DEMO_WEIGHTS) \
	  --host 127.0.0.1 --port 8000
