# Two entry points, both from a fresh Debian/Ubuntu machine as root:
#   make demo   train, export, evaluate and stream on ELPV (the main job)
#   make test   the test suite
# and one for the device at the line (a Jetson with JetPack 6, or any Debian/Ubuntu box):
#   make runtime   the runtime alone, no torch (README "On the device")
# with, for a device without internet, on a machine with it:
#   make wheelhouse   the runtime's wheels for the device, in wheels/, which `make runtime` then installs from
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
# On a Jetson, JetPack's TensorRT bindings too: a Jetson flashed without SDK Manager's "Jetson SDK
# Components" lacks them (NVIDIA's apt repository, which JetPack sets up, has them).
RUNTIME_PACKAGES += $(if $(wildcard /etc/nv_tegra_release),python3-libnvinfer)
# CUDA buffers for the TensorRT backend on JetPack 6 (CUDA 12.6): cuda-python built for 12.6. From 12.9 on it
# links CUDA 12.9's runtime into itself, which a Jetson's older driver refuses (cudaErrorInsufficientDriver:
# no minor-version compatibility on a Jetson without NVIDIA's cuda-compat package); 13 needs CUDA 13.
JETSON_CUDA_PYTHON := cuda-python>=12.6.1,<12.7
# cuda-python 12.8 on comes as cuda-bindings, whose files 12.6 (one package) would be written over: an earlier
# install's goes first, or the two would be mixed.
define jetson_cuda_python
if $(PY) -m pip show -q cuda-bindings >/dev/null 2>&1; then $(PY) -m pip uninstall -q -y cuda-python cuda-bindings; fi; \
	$(PY) -m pip install -q $(OFFLINE) "$(JETSON_CUDA_PYTHON)"
endef

# `make wheelhouse`, for one kind of device at a time (its requirements.txt pins that device's versions): the
# device's Python and platform, JetPack 6's by default (Ubuntu 22.04: Python 3.10, glibc 2.35); a Debian 12
# box: DEVICE_PYTHON=3.11 DEVICE_PLATFORM=x86_64-manylinux_2_36 (uv's names, ending in the glibc version).
# uv resolves the dependencies for the device (pip download would take markers such as
# python_version < "3.11" from the Python it runs on, leaving out wheels the device needs); pip downloads them.
WHEELS ?= wheels
DEVICE_PYTHON ?= 3.10
DEVICE_PLATFORM ?= aarch64-manylinux_2_35
DEVICE_ARCH = $(firstword $(subst -, ,$(DEVICE_PLATFORM)))
DEVICE_GLIBC = $(lastword $(subst _, ,$(DEVICE_PLATFORM)))
WHEELHOUSE_TOOLS ?= build/wheelhouse-tools
# A wheelhouse is used when it is there: pip then reads nothing else (its constraints: the versions resolved for the device).
OFFLINE = $(if $(wildcard $(WHEELS)/requirements.txt),--no-index --find-links $(WHEELS) --constraint $(WHEELS)/requirements.txt)

.PHONY: demo test runtime wheelhouse system-packages venv clean

# A failed apt-get (no internet at the line, not root) is followed by the packages it was to install and the way.
define install_missing
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:" $$missing; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; } || { \
			echo "could not install the system packages" $$missing "(apt-get failed, above): run as root with the" \
				"Debian or Ubuntu archive reachable, or, without internet, bring them as .deb files (README 'On the device')" >&2; \
			exit 1; }; \
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

# Two workers (pytest-xdist): 500-560 s of tests on two cores where one worker took 850-940 s; the streaming
# tests' timeouts were checked under that load, not under more workers than cores.
test: system-packages venv
	$(PY) -m pytest -q -n 2

# Ubuntu 22.04's venv (JetPack 6) comes with pip 22.0, whose build isolation lets the system's setuptools
# (59) in beside the venv's site-packages: it fails on this project's pyproject.toml, so pip is upgraded first.
# A wheelhouse made for another Python or processor is refused before anything is installed.
runtime:
	@if [ -n "$(OFFLINE)" ]; then \
		here=$$($(RUNTIME_PYTHON) -c 'import platform, sys; print("%d.%d %s" % (*sys.version_info[:2], platform.machine()))'); \
		made=$$(cat $(WHEELS)/device 2>/dev/null); \
		if [ "$$here" != "$$made" ]; then \
			echo "$(WHEELS)/ holds wheels for $${made:+Python }$${made:-a device it does not name (no $(WHEELS)/device)}," \
				"and this device runs Python $$here: make the" \
				"wheelhouse for it (make wheelhouse DEVICE_PYTHON=... DEVICE_PLATFORM=...), or move $(WHEELS)/ away to install from PyPI" >&2; \
			exit 1; \
		fi; \
	fi
	$(call install_missing,$(RUNTIME_PACKAGES))
	$(RUNTIME_PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q $(OFFLINE) --upgrade pip
	$(PY) -m pip install -q $(OFFLINE) -e ".[mqtt,opcua]"
	@if [ -e /etc/nv_tegra_release ]; then $(call jetson_cuda_python); fi
	$(VENV)/bin/edge-ad doctor

# pip and setuptools (what pyproject.toml's build-system requires): for the device's pip to install this clone.
wheelhouse:
	$(call install_missing,python3-venv)
	$(PYTHON) -m venv $(WHEELHOUSE_TOOLS)
	$(WHEELHOUSE_TOOLS)/bin/pip install -q "uv>=0.5"
	printf '%s\n' pip "setuptools>=77" $(if $(filter aarch64,$(DEVICE_ARCH)),"$(JETSON_CUDA_PYTHON)") > $(WHEELHOUSE_TOOLS)/device.in
	$(WHEELHOUSE_TOOLS)/bin/uv pip compile -q --no-header --no-annotate --only-binary :all: \
		--python-version $(DEVICE_PYTHON) --python-platform $(DEVICE_PLATFORM) \
		pyproject.toml --extra mqtt --extra opcua $(WHEELHOUSE_TOOLS)/device.in -o $(WHEELHOUSE_TOOLS)/requirements.txt
	$(WHEELHOUSE_TOOLS)/bin/pip download -q --no-deps --only-binary=:all: -d $(WHEELS) \
		--python-version $(DEVICE_PYTHON) --implementation cp \
		$(foreach p,manylinux1 manylinux2010 manylinux2014 $(foreach v,$(shell seq 5 $(DEVICE_GLIBC)),manylinux_2_$(v)),--platform $(p)_$(DEVICE_ARCH)) \
		-r $(WHEELHOUSE_TOOLS)/requirements.txt
	cp $(WHEELHOUSE_TOOLS)/requirements.txt $(WHEELS)/requirements.txt
	echo "$(DEVICE_PYTHON) $(DEVICE_ARCH)" > $(WHEELS)/device
	@echo "$(WHEELS)/: $$(grep -c == $(WHEELS)/requirements.txt) wheels, $$(du -sh $(WHEELS) | cut -f1), for Python $(DEVICE_PYTHON) on $(DEVICE_PLATFORM):" \
		"copy this clone with it to the device; \`make runtime\` there installs from it alone"

# wheels/ stays: it is what a device without internet is installed from.
clean:
	rm -rf $(VENV) edge-ad-demo $(WHEELHOUSE_TOOLS)
