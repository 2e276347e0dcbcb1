# The two entry points of the README: `make book` (the main job) and `make test`.
PY := .venv/bin/python
PROFILE ?= cpu
export HF_HUB_OFFLINE := 1

.PHONY: setup book notebooks html test test-fast bench clean-book

setup:
	bash scripts/setup.sh

## Execute every notebook with papermill at $(PROFILE) and build the HTML book.
book: setup notebooks html

notebooks:
	$(PY) -m clipguard.notebooks run --profile $(PROFILE)

html:
	$(PY) -m clipguard.notebooks build

## The test suite (unit tests, every notebook at profile=smoke, the book build).
test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/bench_train.py

clean-book:
	rm -rf book/_build book/executed
