PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install demo test bench

install:
	$(PIP) install -e '.[test]'

demo: install
	$(PYTHON) cli.py demo --out demo-out

test: install
	$(PYTHON) -m pytest -q tests

bench:
	$(PYTHON) bench/bench_extract.py
