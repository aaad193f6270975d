#!/bin/sh
# Builds the cosign CLI (the oracle of the signature cross-checks) from its Go module at a
# pinned release, into a per-user cache outside the repository, and prints its path.
# A cached build is reused until the pin changes; a failed build leaves no half binary.
set -eu

COSIGN_MODULE=github.com/sigstore/cosign/v2
COSIGN_VERSION=v2.6.5

cache="${XDG_CACHE_HOME:-$HOME/.cache}/aos-operator/cosign/$COSIGN_VERSION"
binary="$cache/cosign"
if [ -x "$binary" ]; then
	echo "$binary"
	exit 0
fi

# cosign v2.6.5 declares go 1.25: the machine's Go (1.26) builds it. A later pin that needs a
# newer Go must export GOTOOLCHAIN=go1.27.3 here (the one approved toolchain).
mkdir -p "$cache"
staging=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$staging"' EXIT
start=$(date +%s)
echo "building $COSIGN_MODULE/cmd/cosign@$COSIGN_VERSION into $cache (a few minutes)" >&2
GOBIN="$staging" GOFLAGS=-buildvcs=false \
	go install -trimpath -ldflags='-s -w' "$COSIGN_MODULE/cmd/cosign@$COSIGN_VERSION" >&2
mv "$staging/cosign" "$binary"
echo "built in $(( $(date +%s) - start ))s, $(stat -c %s "$binary") bytes" >&2
echo "$binary"
