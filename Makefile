# chatforge: `make demo` builds a chat assistant from the built-in world and serves it;
# `make test` runs the test suite. Both create .venv and install what they need by themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
RUN ?= runs/demo
PRESET ?= tiny

.PHONY: demo test venv lint bench serve clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: the CPU wheel of 2.13.0 is what these machines carry.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/chatforge pipeline --run $(RUN) --preset $(PRESET)
	$(VENV)/bin/chatforge report --run $(RUN)
	@echo ""
	@echo "Report card:            $(RUN)/eval/report.md  (plots in $(RUN)/eval/plots/)"
	@echo "Talk to the assistant:  $(VENV)/bin/chatforge chat --run $(RUN)            (the SFT model; --stage base for the raw one)"
	@echo "In the browser / API:   make serve   -> http://127.0.0.1:8000/  (OpenAI-compatible API at /v1)"
	@echo "Continue a text:        $(VENV)/bin/chatforge sample --run $(RUN) --stage base --interactive"
	@echo "Use it from Python:     $(VENV)/bin/chatforge export --run $(RUN) --stage sft --drop-copy-head --out exported/demo-sft"
	@if [ -t 0 ]; then $(VENV)/bin/chatforge chat --run $(RUN) --stage sft; fi

# --durations: the slowest tests are listed at the end, so a CI log shows where the suite's time goes
test: $(STAMP)
	$(PY) -m pytest -q --durations=20

serve: $(STAMP)
	$(VENV)/bin/chatforge serve --run $(RUN) --stage sft --port 8000

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
