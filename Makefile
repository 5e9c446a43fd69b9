# Developer entry points.  `make test` bootstraps .venv with Python 3.12 on a fresh machine.

VENV := .venv
STAMP := $(VENV)/.installed
# A working Python 3.12: `python3.12` on PATH if it runs (pyenv shims may not),
# else the newest pyenv 3.12 interpreter.  Override with `make PYTHON=/path/to/python3.12`.
PYTHON ?= $(shell for candidate in python3.12 $$(ls -d $$HOME/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | sort -V -r); do \
	  if $$candidate -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then command -v $$candidate; break; fi; \
	done)

.PHONY: venv test demo demo-bps postgres-server lint docs bench-render clean

# Every Butler the targets start learns the BlissModel storage class from the package's Butler
# configuration (as the EUPS table arranges); repos' butler.yaml files are never edited.
export DAF_BUTLER_CONFIG_PATH := $(CURDIR)/python/lsst/meas/extensions/bliss/butler_config$(if $(DAF_BUTLER_CONFIG_PATH),:$(DAF_BUTLER_CONFIG_PATH),)

venv: $(STAMP)

# The lsst namespace is pkgutil-style (shared with the Rubin middleware wheels), so the editable
# install must put python/ itself on sys.path.  setuptools does that with a plain .pth file for
# this layout (every package under python/ at its dotted path); the import-boundary test fails
# if it ever stops doing so.  (The old `editable_mode=compat` is deprecated.)

$(STAMP): pyproject.toml
	@if [ -z "$(PYTHON)" ]; then echo "error: no working Python 3.12 found; install it or run 'make PYTHON=/path/to/python3.12'" >&2; exit 1; fi
	@if [ ! -x $(VENV)/bin/python ]; then echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); fi
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

test: venv postgres-server
	$(VENV)/bin/python -m pytest

# The tests run BlissDRP against a PostgreSQL registry on a throw-away server, which needs the server
# binaries (initdb, pg_ctl, postgres; Debian keeps them in /usr/lib/postgresql/VERSION/bin).  As root
# on Debian or Ubuntu they are installed when missing; otherwise install the postgresql package.
postgres-server:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing the PostgreSQL server (Debian package postgresql)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else echo "error: no PostgreSQL server binaries; install the postgresql package" >&2; exit 1; fi

# The main job end to end: a fresh SQLite Butler repo of simulated calexps (spatially varying PSF,
# masks, truth tables), the BlissModel storage class, the packaged default model, `pipetask run`,
# then the outputs read back through the Butler and scored against the truth (bliss-demo-report, and
# BlissValidateTask writing bliss_validation_metrics).
DEMO_REPO ?= demo_repo
DEMO_OUTPUT ?= u/demo/bliss
DEMO_INPUTS ?= BlissSim/calexp,bliss/models/default

demo: venv
	$(VENV)/bin/bliss-make-demo-repo $(DEMO_REPO) --visits 3 --bands g r i --overwrite
	$(VENV)/bin/butler bliss-register $(DEMO_REPO)
	$(VENV)/bin/butler bliss-ingest-model $(DEMO_REPO)
	$(VENV)/bin/pipetask run -b $(DEMO_REPO) -i $(DEMO_INPUTS) -o $(DEMO_OUTPUT) \
	    -p pipelines/BlissDRP.yaml --register-dataset-types
	$(VENV)/bin/butler query-datasets $(DEMO_REPO) bliss_source --collections $(DEMO_OUTPUT)
	$(VENV)/bin/bliss-demo-report $(DEMO_REPO) --collections $(DEMO_OUTPUT) --tables
	$(VENV)/bin/pipetask run -b $(DEMO_REPO) -i $(DEMO_OUTPUT) -o $(DEMO_OUTPUT)-validate \
	    -p pipelines/BlissValidate.yaml --register-dataset-types
	$(VENV)/bin/butler query-datasets $(DEMO_REPO) bliss_validation_metrics bliss_validation_summary \
	    --collections $(DEMO_OUTPUT)-validate

# The demo through BPS: the same repo and model, then `bps submit` of bps/bps_BlissDRP.yaml with its
# local Parsl site (ctrl_bps_parsl; BPS writes submit/ and Parsl runinfo/ under bps_runs/).
demo-bps: venv
	$(VENV)/bin/bliss-make-demo-repo $(DEMO_REPO) --visits 3 --bands g r i --overwrite
	$(VENV)/bin/butler bliss-register $(DEMO_REPO)
	$(VENV)/bin/butler bliss-ingest-model $(DEMO_REPO)
	mkdir -p bps_runs
	cd bps_runs && PATH=$(CURDIR)/$(VENV)/bin:$$PATH bps submit $(CURDIR)/bps/bps_BlissDRP.yaml \
	    -b $(CURDIR)/$(DEMO_REPO) -i $(DEMO_INPUTS) -o $(DEMO_OUTPUT)-bps
	$(VENV)/bin/butler query-datasets $(DEMO_REPO) bliss_source --collections $(DEMO_OUTPUT)-bps
	$(VENV)/bin/bliss-demo-report $(DEMO_REPO) --collections $(DEMO_OUTPUT)-bps

# The documentation (doc/, Sphinx with sphinx-automodapi and numpydoc; the `docs` extra), built
# offline with warnings as errors, nitpicky references included, into doc/_build/html.
DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): $(STAMP)
	$(VENV)/bin/python -m pip install --quiet -e '.[test,docs]'
	@touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	rm -rf doc/_build doc/py-api
	$(VENV)/bin/python -m sphinx -W --keep-going -n -q -b html doc doc/_build/html

lint: venv
	$(VENV)/bin/ruff check python tests bin.src
	$(VENV)/bin/ruff format --check python tests bin.src

bench-render: venv
	$(VENV)/bin/bliss-bench render --quick --json bench-render.json

clean:
	rm -rf $(VENV) $(DEMO_REPO) bps_runs doc/_build doc/py-api build *.egg-info python/*.egg-info .pytest_cache .ruff_cache
