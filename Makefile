# Two entry points, both from a fresh Debian/Ubuntu machine as root:
#   make demo   train, export, evaluate and stream on ELPV (the main job)
#   make test   the test suite
# and one for the device at the line (a Jetson with JetPack 6, or any Debian/Ubuntu box):
#   make runtime   the runtime alone, no torch (README "On the device")
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0
# libaravis-0.8-0: aravissrc for genicam:// inputs; aravis-tools(-cli): a simulated GigE camera and
# arv-tool, for the tests; mosquitto: an MQTT broker, and openssl: certificates for its TLS, for the tests;
# systemd: its own reading of the unit `edge-ad service` writes (systemd --test, systemd-analyze), for the tests.
SYSTEM_PACKAGES := python3-venv python3-dev gcc pkg-config libgirepository1.0-dev libcairo2-dev systemd \
	gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
	gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav \
	gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gir1.2-gst-rtsp-server-1.0 \
	libaravis-0.8-0 aravis-tools aravis-tools-cli mosquitto openssl

# The runtime takes the system's GStreamer bindings (python3-gi) and, on a Jetson, JetPack's
# TensorRT (python3-libnvinfer) through a venv of the system Python with its site-packages.
RUNTIME_PYTHON ?= /usr/bin/python3
RUNTIME_PACKAGES := python3-venv python3-gi \
	gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
	gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav \
	gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gir1.2-gst-rtsp-server-1.0
# CUDA buffers for the TensorRT backend on JetPack 6 (CUDA 12.6): cuda-python 13 needs CUDA 13.
JETSON_CUDA_PYTHON := cuda-python>=12.6.1,<13

.PHONY: demo test runtime system-packages venv clean

define install_missing
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
endef

system-packages:
	$(call install_missing,$(SYSTEM_PACKAGES))

$(VENV)/.installed: pyproject.toml | system-packages
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[train,gst,data,mqtt,opcua,dev]"
	touch $@

venv: $(VENV)/.installed

demo: system-packages venv
	$(VENV)/bin/edge-ad demo --workdir edge-ad-demo

test: system-packages venv
	$(PY) -m pytest -q

runtime:
	$(call install_missing,$(RUNTIME_PACKAGES))
	$(RUNTIME_PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q -e ".[mqtt,opcua]"
	@if [ -e /etc/nv_tegra_release ]; then $(PY) -m pip install -q "$(JETSON_CUDA_PYTHON)"; fi
	$(VENV)/bin/edge-ad doctor

clean:
	rm -rf $(VENV) edge-ad-demo
