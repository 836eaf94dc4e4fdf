# Two entry points, both from a fresh Debian/Ubuntu machine as root:
#   make demo   train, export, evaluate and stream on ELPV (the main job)
#   make test   the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0
SYSTEM_PACKAGES := python3-venv python3-dev gcc pkg-config libgirepository1.0-dev libcairo2-dev \
	gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
	gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav \
	gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gir1.2-gst-rtsp-server-1.0

.PHONY: demo test system-packages venv clean

system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml | system-packages
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[train,gst,data,dev]"
	touch $@

venv: $(VENV)/.installed

demo: system-packages venv
	$(VENV)/bin/edge-ad demo --workdir edge-ad-demo

test: system-packages venv
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) edge-ad-demo
