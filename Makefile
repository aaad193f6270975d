# Everything a fresh Debian machine (root, Python 3.11) needs: `make demo` and `make test`.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SIGNER_VENVS := .cache/signer
# System packages the tests and the demo use: runc runs services, docker-registry is the
# real OCI registry, skopeo and umoci check our OCI output.
APT_PACKAGES := runc umoci skopeo docker-registry busybox-static pigz

.PHONY: all system-deps venv test test-fast demo bench crds manifests clean

all: test

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(BIN)/aosctl: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

venv: $(BIN)/aosctl

# aos-signer (AosEdge's own validator) is the oracle of the differential tests. Its two
# major versions pin conflicting dependencies, so each lives in its own virtualenv.
$(SIGNER_VENVS)/%/ok:
	$(PYTHON) -m venv $(SIGNER_VENVS)/$*
	$(SIGNER_VENVS)/$*/bin/pip install -q 'aos-signer==$*'
	@touch $@

signer-venvs: $(SIGNER_VENVS)/1.17.0/ok $(SIGNER_VENVS)/1.16.0/ok $(SIGNER_VENVS)/2.1.0/ok

test: system-deps venv signer-venvs
	AOS_SIGNER_VENVS=$(CURDIR)/$(SIGNER_VENVS) $(BIN)/pytest $(PYTEST_ARGS)

test-fast: venv
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

demo: system-deps venv
	$(BIN)/aosctl validate examples/hello-world

# The Kubernetes API emulator of the e2e tests against stock KMock, and its watch fan-out.
bench-kube-emulator: venv
	$(BIN)/python -m benchmarks.kube_emulator

crds: venv
	$(BIN)/aosctl crds --output crds

clean:
	rm -rf $(VENV) .cache .pytest_cache build *.egg-info operator/*.egg-info
