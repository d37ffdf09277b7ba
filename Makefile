# Takamul: `make demo` and `make test` each set everything up first (virtual environment, install).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8080
DB ?= sqlite:///data/takamul.sqlite
PYTEST_ARGS ?= -n 2 --durations=15

.PHONY: demo test lint typecheck unit serve definitions clean bench bench-registry bench-coordination browser

$(STAMP): pyproject.toml package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip==25.3
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	npm ci --no-audit --no-fund --loglevel=error
	touch $(STAMP)

# The browser tests drive Debian's Chromium (Playwright's own browser download is not reachable).
CHROMIUM ?= /usr/bin/chromium
browser: $(CHROMIUM)
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -q --no-install-recommends chromium >/dev/null || \
	  (apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null); \
	else \
	  echo "Chromium is missing: run 'sudo apt-get install chromium' (Debian) or set CHROMIUM=" >&2; exit 1; \
	fi

DEMO_PERSONS ?= 1000
DEMO_DATA := data/demo-population-$(DEMO_PERSONS)
DEMO_AS_OF ?= 2024-12-31

demo: $(STAMP)
	test -f $(DEMO_DATA)/Patient.ndjson || \
	  $(BIN)/takamul synth --country SA --patients $(DEMO_PERSONS) --seed 1 --out $(DEMO_DATA)
	$(BIN)/takamul load $(DEMO_DATA)/*.ndjson --db $(DB) --errors data/demo-load-errors.ndjson
	$(BIN)/takamul load-demo --db $(DB)
	# the care programmes' overdue lists on the day the synthetic history ends (the load's
	# catch-up linked the registrations to persons, so the equity report below counts persons)
	$(BIN)/takamul programmes overdue --db $(DB) --as-of $(DEMO_AS_OF) --limit 100
	# what the web app's equity dashboard and worklists show: a published report, outreach Tasks
	$(BIN)/takamul equity report -i $(DEMO_DATA) --db $(DB) --publish --out data/equity-report.html
	$(BIN)/takamul equity indicators outreach --indicator dm_screen --db $(DB) --limit 200
	$(BIN)/takamul demo-credentials --db $(DB)
	@echo "Takamul demo (Ctrl-C to stop):"
	@echo "  web application: http://$(HOST):$(PORT)/app/  (sign in with a DEMO login above: one per role)"
	@echo "  FHIR R4 API:     http://$(HOST):$(PORT)/fhir  A token:"
	@echo "  TOKEN=\$$($(BIN)/takamul token --db $(DB) --client demo-ministry --scope 'system/*.rs' --lifetime 3600 --base-url http://$(HOST):$(PORT)/fhir)"
	@echo "  curl -H \"Authorization: Bearer \$$TOKEN\" http://$(HOST):$(PORT)/fhir/Patient?_count=3"
	$(BIN)/takamul serve --db $(DB) --host $(HOST) --port $(PORT)

test: $(STAMP) $(CHROMIUM) lint typecheck
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts bench
	$(BIN)/ruff format --check src tests scripts bench

typecheck: $(STAMP)
	$(BIN)/mypy

serve: $(STAMP)
	$(BIN)/takamul serve --db $(DB) --host $(HOST) --port $(PORT)

# Re-derive the compact R4 definition table from the official package (needs npm).
definitions: $(STAMP)
	mkdir -p .cache && cd .cache && npm pack --silent hl7.fhir.r4.examples@4.0.1 && \
	  mkdir -p hl7.fhir.r4.examples && tar xzf hl7.fhir.r4.examples-4.0.1.tgz -C hl7.fhir.r4.examples
	$(BIN)/python scripts/derive_definitions.py .cache/hl7.fhir.r4.examples/package

clean:
	rm -rf $(VENV) node_modules .cache .pytest_cache .mypy_cache .ruff_cache data/

SCALE ?= 10000
# make bench DB=postgresql://... runs on that (empty) database; by default on both stores
BENCH_DB := $(if $(filter command line environment,$(origin DB)),$(DB),both)
bench: $(STAMP)
	$(BIN)/python bench/run.py --scale $(SCALE) --db $(BENCH_DB)

# Care coordination (issue 16): notification delay from commit at 100 events/s, and the loop
# metrics for 1,000,000 persons (its stores are built on the first run, which takes long).
bench-coordination: $(STAMP)
	$(BIN)/python bench/notifications_bench.py --db both --batch 10
	$(BIN)/python bench/notifications_bench.py --db both
	$(BIN)/python bench/referral_metrics_bench.py --db sqlite --reuse
	$(BIN)/python bench/referral_metrics_bench.py --db postgresql --reuse

# The client registry on independently written registrations, next to Splink (issue 12).
bench-registry: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	$(BIN)/python bench/registry_accuracy.py
