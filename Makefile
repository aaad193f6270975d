# Everything a fresh Debian machine (root, Python 3.11) needs: `make demo` and `make test`.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SIGNER_VENVS := .cache/signer
DEMO_SECONDS ?= 8
# System packages the tests and the demo use: runc runs services, docker-registry is the
# real OCI registry, skopeo and umoci check our OCI output, shellcheck lints tests/kind/e2e.sh.
# The runtime also needs e2fsprogs (mkfs.ext4, e2fsck, resize2fs, debugfs for the storage and
# state volumes), mount (losetup) and procps (ps); Debian installs them by default.
APT_PACKAGES := runc umoci skopeo docker-registry busybox-static pigz shellcheck e2fsprogs mount procps zsh \
	containernetworking-plugins dnsmasq-base nftables iptables iproute2 iperf3

.PHONY: all system-deps venv signer-venvs cosign control-plane demo-cluster test test-fast demo bench crds manifests clean

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
# Pinned dependency sets (tests/differential/constraints) keep the oracle's behaviour fixed.
$(SIGNER_VENVS)/%/ok: tests/differential/constraints/aos-signer-%.txt
	rm -rf $(SIGNER_VENVS)/$*
	$(PYTHON) -m venv $(SIGNER_VENVS)/$*
	$(SIGNER_VENVS)/$*/bin/pip install -q -c $< 'aos-signer==$*'
	@touch $@

signer-venvs: $(SIGNER_VENVS)/1.17.0/ok $(SIGNER_VENVS)/1.16.0/ok $(SIGNER_VENVS)/2.1.0/ok

# cosign (the oracle of the signature cross-checks), built from its Go module at the pin in
# tools/cosign.sh into ~/.cache/aos-operator/cosign/<version>/; a no-op once built.
cosign:
	@sh tools/cosign.sh >/dev/null

# kube-apiserver, kube-controller-manager and etcd for the tests, built from the Go modules pinned in
# tools/control-plane/go.mod into ~/.cache/aos-operator/control-plane/ (outside the clone, so a fresh
# clone on the same machine reuses them); built only when missing or when the pin changes.
control-plane:
	sh tools/control-plane/build.sh

test: system-deps venv signer-venvs cosign control-plane
	AOS_SIGNER_VENVS=$(CURDIR)/$(SIGNER_VENVS) AOS_COSIGN="$$(sh tools/cosign.sh)" $(BIN)/pytest $(PYTEST_ARGS)

test-fast: venv
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

# The example service end to end: validate its config, build its package, run it under runc
# with its quotas for a few seconds (needs root), then stop and clean up.
demo: system-deps venv
	$(BIN)/aosctl validate examples/hello-world
	mkdir -p out
	$(BIN)/aosctl build examples/hello-world -o out/hello-world.tar
	$(BIN)/aosctl run out/hello-world.tar --service-id 0c3f6b8e-5a47-4a4b-9d8b-6f1c2b7e4a10 --timeout $(DEMO_SECONDS)

# The operator and one agent (root, runc) on a real control plane on this machine: apply the example,
# wait for Ready, show it, delete it, stop. KEEP=1 leaves it running and prints how to stop it.
demo-cluster: system-deps venv control-plane
	$(BIN)/python -m tools.demo_cluster $(if $(filter 1,$(KEEP)),--keep)

crds: venv
	$(BIN)/aosctl crds --output crds
	cp crds/*.yaml charts/aos-operator/crds/
	$(BIN)/python -m tools.chart_manifests

# manifests/install.yaml: the Helm chart rendered with its defaults, for `kubectl apply -f`.
manifests: venv
	$(BIN)/python -m tools.chart_manifests

# Every benchmark, one run each, ratios against the named baselines (see README, Performance).
bench: system-deps venv
	$(BIN)/python benchmarks/build.py
	$(BIN)/python benchmarks/registry.py
	$(BIN)/python benchmarks/run.py
	$(BIN)/python -m benchmarks.operator_scale

clean:
	rm -rf $(VENV) .cache .pytest_cache build *.egg-info operator/*.egg-info
