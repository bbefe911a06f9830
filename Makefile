# The two set-up commands of the README:
#   make serve   install, then start the service embedded (SQLite, local store, a
#                worker that needs no broker server) with the demo model and data;
#                make serve PORT=8080 HOST=0.0.0.0 to listen elsewhere
#   make test    install, then run the whole test suite
PYTHON ?= python3
VENV ?= .venv
# A CPU build of torch on this project's CI machines; override for your platform,
# e.g. make serve TORCH='torch --index-url https://download.pytorch.org/whl/cu124'
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install serve test bench-minitofu bench-markov bench-api bench-engine bench-streams

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet --editable '.[dev]'
	touch $@

install: $(BIN)/.installed

serve: install
	$(BIN)/obliviate serve --host $(HOST) --port $(PORT)

test: install
	$(BIN)/python -m pytest

bench-minitofu: install
	$(BIN)/python bench/minitofu.py --out results.json

bench-markov: install
	$(BIN)/python bench/markov.py --out markov.json --plot markov.png

bench-api: install
	$(BIN)/python bench/api_load.py

bench-engine: install
	$(BIN)/python bench/engine_throughput.py

bench-streams: install
	$(BIN)/python bench/stream_fanout.py
