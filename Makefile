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
	$(PYTHON) bench/bench_ensemble.py
	$(PYTHON) bench/bench_fit.py
	$(PYTHON) bench/bench_faces.py
