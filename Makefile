# The two commands a newcomer needs: `make run` and `make test`. Both install what they need first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NODE_STAMP := tests/node/node_modules/.installed

.PHONY: install run test bench lint proto proto-check clean

install: $(STAMP) $(NODE_STAMP)

# Re-runs only when a pyproject changes, so `make install` is quick when nothing changed.
$(STAMP): pyproject.toml clients/python/pyproject.toml protos/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e protos/python -e 'clients/python[cli]' -e '.[dev,whisper]'
	touch $(STAMP)

# Node.js packages for the cross-language tests (@grpc/grpc-js) and the proto lint (buf).
$(NODE_STAMP): tests/node/package.json tests/node/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --silent --no-audit --no-fund --prefix tests/node && touch $(NODE_STAMP); \
	else echo "npm not found: the Node.js client test will fail"; fi

run: $(STAMP)
	$(BIN)/gateway serve $(ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m bench $(ARGS)

lint: install
	$(BIN)/ruff check gateway clients/python/gateway_client tests bench harness scripts
	$(BIN)/mypy gateway clients/python/gateway_client
	tests/node/node_modules/.bin/buf lint

proto: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

proto-check: $(STAMP)
	$(BIN)/python scripts/gen_protos.py --check

clean:
	rm -rf $(VENV) .venv-octoai .venv-py310 .venv-k8s tests/node/node_modules data .pytest_cache
