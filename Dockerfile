# syntax=docker/dockerfile:1
# One image for the operator, the device agent and the aosctl command line (entry point `aosctl`).
# runc comes from Debian. Build: docker build -t aos-operator:dev .

# --- build: a wheel of the project, installed with its dependencies into a virtualenv ---
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
# --prefer-binary: dependencies come as wheels; this stage has no compiler either.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv /opt/aos \
    && /opt/aos/bin/pip install --prefer-binary /wheels/*.whl \
    && /opt/aos/bin/pip uninstall --yes pip setuptools

# --- runtime: Python, runc and the virtualenv; no compilers, no pip ---
FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="aos-operator" \
      org.opencontainers.image.description="AosEdge services on Kubernetes: operator, device agent (runc) and aosctl" \
      org.opencontainers.image.licenses="Apache-2.0"
# Debian's security updates replace runc's exact version, so it is not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install --yes --no-install-recommends runc \
        containernetworking-plugins dnsmasq-base nftables iptables iproute2 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 aos \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin aos
COPY --from=build /opt/aos /opt/aos
ENV PATH=/opt/aos/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The operator runs as this user (the chart's runAsUser); the agent's pod asks for root (runc).
USER 10001:10001
ENTRYPOINT ["aosctl"]
CMD ["--help"]
