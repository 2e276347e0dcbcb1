# The two entry points of the README: `make book` (the main job) and `make test`.
PY := .venv/bin/python
PROFILE ?= cpu
export HF_HUB_OFFLINE := 1

.PHONY: setup book notebooks html browser-check test test-fast bench clean-book

setup:
	bash scripts/setup.sh

## Execute every notebook with papermill at $(PROFILE), build the HTML book and check it in a browser.
book: setup notebooks html browser-check

notebooks:
	$(PY) -m clipguard.notebooks run --profile $(PROFILE)

html:
	$(PY) -m clipguard.notebooks build

## Every page of the built book in headless chromium; screenshots in book/_build/screenshots/.
browser-check:
	$(PY) -m clipguard.browser_check book/_build/html

## The test suite (unit tests, every notebook at profile=smoke, the book build).
test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/bench_train.py

clean-book:
	rm -rf book/_build book/executed
