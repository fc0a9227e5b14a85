# Two commands: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
export HF_HUB_OFFLINE := 1

.PHONY: demo test install data clean bench browser fortunes

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/difflab demo

test: $(STAMP) browser fortunes
	$(PY) -m pytest -q

# Fashion-MNIST as IDX files under /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist), and fortunes.
data: fortunes
	@if [ -d /usr/share/datasets/fashion-mnist ]; then echo "Fashion-MNIST already installed"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; fi

# Debian's fortune files (/usr/share/games/fortunes), the built-in text corpus data.name=fortunes besides the Bible.
# Installed when missing, as root or with password-less sudo; otherwise a note (its tests skip). Never fails the build.
fortunes:
	@if [ -d /usr/share/games/fortunes ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else echo "note: Debian's fortunes is missing and this is not root (no sudo): its tests will be skipped"; exit 0; fi; \
	echo "installing Debian's fortunes (apt-get) for the text corpus data.name=fortunes"; \
	{ $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fortunes >/dev/null; } \
	  || echo "note: could not install fortunes: its tests will be skipped"

# Headless Chromium for the browser test of `difflab report` (tests/test_report.py skips without it).
# Installed when missing, as root or with password-less sudo; otherwise a note. Never fails the build.
browser:
	@if [ -x /usr/bin/chromium ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else echo "note: chromium is missing and this is not root (no sudo): the report browser test will be skipped"; exit 0; fi; \
	echo "installing chromium (apt-get) for the report browser test"; \
	{ $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "note: could not install chromium: the report browser test will be skipped"

bench: $(STAMP) data
	$(PY) bench/fashion_vs_diffusers.py --minutes 10 --n 2000 --table full --n-table 500

clean:
	rm -rf runs .pytest_cache
