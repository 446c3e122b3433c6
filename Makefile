# Two commands do all set-up on a fresh Debian 12 machine (root, or a user with sudo):
#   make demo   runs the main job          make test   runs every check CI runs
# Both install what they need (Debian packages, .venv, the test delegate library)
# and skip each step whose inputs have not changed.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMPS := .stamps
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FAKE_LIB := build/libfake_edgetpu.so

# Debian packages the tests and the demo use. Keep in step with docs/testing.md.
APT_PACKAGES := mosquitto umockdev gir1.2-umockdev-1.0 libumockdev0 gcc libc6-dev make \
	python3-venv systemd openssl ca-certificates
# Building and checking the Debian package (make deb, tests/package), and its runtime
# Depends so `apt-get install ./edgetpud_*.deb` needs nothing else.
APT_PACKAGES += debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools \
	lintian man-db python3-pytest python3-hypothesis python3-numpy python3-pyudev \
	python3-paho-mqtt python3-pil python3-flatbuffers mosquitto-clients
# promtool (tests/integration/test_metrics.py) and a real Prometheus (tests/e2e/test_metrics_e2e.py)
APT_PACKAGES += prometheus python3-prometheus-client
# pyzmq for the Frigate endpoint (edgetpud/frigate/router.py); the venv takes PyPI's, the .deb Debian's
APT_PACKAGES += python3-zmq
# sd_notify for edgetpud/notify.py; the venv takes PyPI's, the .deb Debian's
APT_PACKAGES += python3-sdnotify
# The system test (make test-system): a booted bookworm container, and piuparts.
APT_PACKAGES += debootstrap systemd-container piuparts
# Stripping the arm64 and armhf packages' wheel library when cross-building them (make deb).
APT_PACKAGES += binutils-aarch64-linux-gnu binutils-arm-linux-gnueabihf

.PHONY: help demo test lint typecheck pytest clean deb test-paho16 test-system

help:
	@echo "make demo   run the end-to-end demo (installs what it needs)"
	@echo "make test   ruff check, ruff format --check, mypy --strict, pytest (installs what it needs)"
	@echo "make bench  the benchmark suite (< 15 min); make bench-quick: its 60-second subset"
	@echo "make deb    the Debian packages (amd64, arm64, armhf); make test-system: one in a booted container (root)"
	@echo "make fuzz   property tests and fuzzers with new random examples (make test replays fixed ones)"

# $(call apt-install,PACKAGES): install those of the Debian packages that are missing.
define apt-install
	@missing=$$(for p in $(1); do \
		dpkg-query -W -f='$${db:Status-Status}\n' $$p 2>/dev/null | grep -qx installed || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get -o DPkg::Lock::Timeout=900 update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends $$missing; \
	fi
	@mkdir -p $(STAMPS) && touch $@
endef

$(STAMPS)/apt: Makefile
	$(call apt-install,$(APT_PACKAGES))

$(STAMPS)/venv: pyproject.toml | $(STAMPS)/apt
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

$(FAKE_LIB): tests/native/fake_edgetpu.c | $(STAMPS)/apt
	@mkdir -p build
	gcc -shared -fPIC -O2 -Wall -Wextra -Werror -pthread -o $@ $< -ldl

lint: $(STAMPS)/venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports  # module boundaries: [tool.importlinter] in pyproject.toml
	$(BIN)/python tools/check_sizes.py  # no class over 400 lines, no function over 80

typecheck: $(STAMPS)/venv
	$(BIN)/mypy --strict edgetpud plugins/edgetpud_plugins

pytest: $(STAMPS)/venv $(FAKE_LIB)
	umockdev-wrapper $(BIN)/pytest

test: lint typecheck pytest test-paho16

# The MQTT tests again with paho-mqtt 1.6.1 (what Debian 12 ships) in a second venv.
PAHO16 := .venv-paho16
MQTT_TESTS := tests/integration/test_mqtt_link.py tests/integration/test_mqtt_requests.py \
	tests/integration/test_mqtt_status.py tests/integration/test_broker_tls.py \
	tests/integration/test_mqtt_homeassistant.py
$(STAMPS)/paho16: pyproject.toml | $(STAMPS)/apt
	@[ -x $(PAHO16)/bin/python ] || $(PYTHON) -m venv $(PAHO16)
	$(PAHO16)/bin/python -m pip install -q -e . 'paho-mqtt==1.6.1' pytest pytest-timeout
	@mkdir -p $(STAMPS) && touch $@

# Property tests and fuzzers with new random examples (make test replays the same ones each
# run; tests/conftest.py). A failure found here goes into its test as an @example.
.PHONY: fuzz
fuzz: $(STAMPS)/venv $(FAKE_LIB)
	EDGETPUD_HYPOTHESIS_RANDOM=1 umockdev-wrapper $(BIN)/pytest -q tests/unit/test_fuzz_config.py \
		tests/unit/test_fuzz_reply_topics.py tests/unit/test_fuzz_requests.py \
		tests/unit/test_modelfile.py tests/unit/test_placement_properties.py \
		tests/integration/test_mqtt_hostile.py

# The soak run (python -m bench.soak): the daemon under load through broker kills and replugs.
# Not part of make test. SOAK_SECONDS=120 shortens it; writes bench/results/soak.json.
SOAK_SECONDS ?= 600
.PHONY: soak
soak: $(STAMPS)/venv $(FAKE_LIB)
	umockdev-wrapper $(BIN)/python -m bench.soak --seconds $(SOAK_SECONDS)

test-paho16: $(STAMPS)/paho16
	$(PAHO16)/bin/python -m pytest -p no:cacheprovider $(MQTT_TESTS)

# The story on simulated accelerators (umockdev + the test libedgetpu): CPU, plug in, host
# abort, unplug, every request answered. Needs Coral's MobileNet and cat.bmp in
# ../shared/models or MODELS=DIR (demo/run_demo.py says so when they are missing).
demo: $(STAMPS)/venv $(FAKE_LIB)
	$(BIN)/edgetpud check-config etc/edgetpud/edgetpud.toml
	umockdev-wrapper $(BIN)/python demo/run_demo.py $(if $(MODELS),--models $(MODELS))

clean:
	rm -rf build $(STAMPS) .mypy_cache .pytest_cache .ruff_cache

# The Debian packages, one per architecture (amd64, arm64, armhf: each carries that
# architecture's tflite_runtime wheel), each built from a copy of the tree in build/deb/src
# (artefacts stay out of the repo) with Debian's PATH so pybuild uses Debian's python3, then
# checked by lintian. The other architectures are cross-built: `dpkg-buildpackage -a ARCH -d`
# (-d: their build dependencies are all arch:all or native tools; no compiler is involved, the
# only binary is the wheel's). DEB_ARCHES=amd64 builds one.
DEB_DIR := build/deb
DEB_ARCHES ?= amd64 arm64 armhf
# PyPI's tflite_runtime wheels, downloaded once (pip download) and checked against
# debian/tflite-runtime.sha256sums; build/ is kept between runs, so the download is too.
WHEEL_DIR := build/wheels
TFLITE_VERSION := 2.14.0
TFLITE_PLATFORMS := manylinux2014_x86_64 manylinux_2_34_aarch64 manylinux_2_34_armv7l
$(WHEEL_DIR)/.checked: debian/tflite-runtime.sha256sums | $(STAMPS)/venv
	@mkdir -p $(WHEEL_DIR)
	for platform in $(TFLITE_PLATFORMS); do \
		[ -f $(WHEEL_DIR)/tflite_runtime-$(TFLITE_VERSION)-cp311-cp311-$$platform.whl ] || \
		$(BIN)/python -m pip download -q --disable-pip-version-check --no-deps \
			--only-binary=:all: --platform $$platform --python-version 3.11 \
			--implementation cp --abi cp311 -d $(WHEEL_DIR) tflite-runtime==$(TFLITE_VERSION) \
		|| exit 1; \
	done
	cd $(WHEEL_DIR) && sha256sum -c --strict ../../debian/tflite-runtime.sha256sums
	@touch $@

deb: $(STAMPS)/apt $(WHEEL_DIR)/.checked
	rm -rf $(DEB_DIR) && mkdir -p $(DEB_DIR)
	set -e; for arch in $(DEB_ARCHES); do \
		rm -rf $(DEB_DIR)/src && mkdir -p $(DEB_DIR)/src/wheels; \
		git ls-files -z --cached --others --exclude-standard \
			| while IFS= read -r -d '' f; do [ -e "$$f" ] && printf '%s\0' "$$f"; done \
			| tar -c --null --no-recursion -T - | tar -x -C $(DEB_DIR)/src; \
		cp $(WHEEL_DIR)/*.whl $(DEB_DIR)/src/wheels/; \
		cross=$$([ "$$arch" = "$$(dpkg --print-architecture)" ] || echo "-a $$arch -d"); \
		(cd $(DEB_DIR)/src && env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/nonexistent \
			LC_ALL=C.UTF-8 DEB_BUILD_OPTIONS="$$DEB_BUILD_OPTIONS" \
			dpkg-buildpackage -us -uc -b $$cross); \
		(cd $(DEB_DIR) && env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 \
			lintian --info --display-info --pedantic edgetpud_*_$$arch.changes \
			| tee lintian-$$arch.log); \
		! grep -q '^E: ' $(DEB_DIR)/lintian-$$arch.log; \
	done
	rm -rf $(DEB_DIR)/src
	@ls $(DEB_DIR)/*.deb

# The package under real systemd (tests/system, docs/testing.md): builds this machine's
# .deb, boots a cached debootstrap of bookworm with systemd-nspawn, installs it there,
# and runs piuparts. Root only. Seconds per step: build/test-system-times.json (not printed,
# so that pytest's summary stays the last line CI reads).
test-system: $(STAMPS)/venv
	$(MAKE) --no-print-directory deb DEB_ARCHES=$$(dpkg --print-architecture) DEB_BUILD_OPTIONS=nocheck
	EDGETPUD_SYSTEM_TESTS=1 $(BIN)/pytest -p no:cacheprovider tests/system

# The benchmark suite (`python -m bench`, bench/__main__.py; docs/benchmarks.md): matplotlib for
# the plots, and ai-edge-litert in its own venv (it needs numpy 2, tflite-runtime 2.14 needs numpy<2).
.PHONY: bench bench-quick
LITERT := .venv-litert
$(STAMPS)/bench: pyproject.toml $(STAMPS)/venv
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	@[ -x $(LITERT)/bin/python ] || $(PYTHON) -m venv $(LITERT)
	$(LITERT)/bin/python -m pip install -q ai-edge-litert \
		|| echo "ai-edge-litert could not be installed: the CPU fallback benchmark reports it"
	@touch $@

bench: $(STAMPS)/bench $(FAKE_LIB)
	umockdev-wrapper $(BIN)/python -m bench

bench-quick: $(STAMPS)/bench $(FAKE_LIB)
	umockdev-wrapper $(BIN)/python -m bench --quick

# The arm64 and armhf packages installed and serving in emulated bookworm systems
# (tests/arm, docs/testing.md): qemu-user runs the other architectures' binaries, debootstrap
# makes their userland once (cached under /var/cache/edgetpud-arm). Needs root.
# ARM_ARCHES="arm64" tests one. Takes minutes per architecture (figures in docs/testing.md).
ARM_ARCHES ?= arm64 armhf
$(STAMPS)/apt-arm: Makefile | $(STAMPS)/apt
	$(call apt-install,qemu-user-static binfmt-support debootstrap)

.PHONY: test-arm
test-arm: $(STAMPS)/venv $(STAMPS)/apt-arm
	$(MAKE) --no-print-directory deb DEB_ARCHES="$(ARM_ARCHES)" DEB_BUILD_OPTIONS=nocheck
	EDGETPUD_ARM=1 EDGETPUD_ARM_ARCHES="$(ARM_ARCHES)" $(BIN)/pytest -p no:cacheprovider \
		-o addopts="-ra" -v -s tests/arm
