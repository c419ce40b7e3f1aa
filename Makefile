PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install demo test bench

install:
	$(PIP) install -e '.[test]'
	# the speaker extractor's voice encoder: its wheel pins ancient packages it does not import, so
	# it is installed without them (what it imports at run time is in setup.cfg)
	$(PIP) install --no-deps 'resemblyzer==0.1.4'

demo: install
	$(PYTHON) cli.py demo --out demo-out

test: install
	$(PYTHON) -m pytest -q tests

bench:
	$(PYTHON) bench/bench_extract.py
	$(PYTHON) bench/bench_ensemble.py
	$(PYTHON) bench/bench_fit.py
	$(PYTHON) bench/bench_faces.py
	$(PYTHON) bench/bench_pseudo.py
	$(PYTHON) bench/bench_inputs.py
	$(PYTHON) bench/bench_scale.py
	$(PYTHON) bench/bench_recognise.py
	$(PYTHON) bench/bench_speech.py
	$(PYTHON) bench/bench_emodb.py
	$(PYTHON) bench/bench_whisper_pad.py
