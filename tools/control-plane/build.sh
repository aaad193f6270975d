#!/bin/sh
# Builds the test control plane: kube-apiserver and kube-controller-manager from k8s.io/kubernetes,
# etcd from go.etcd.io/etcd/server/v3, at the pins of go.mod/go.sum beside this script
# (tools/control-plane/pin.sh regenerates them). The binaries go to a per-user cache outside any
# clone, keyed by the pin, so a fresh clone on the same machine reuses them:
#   ${AOS_CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/aos-operator/control-plane}/<k8s>-<key>/bin
# Prints that bin directory as its last line; builds only when it is missing.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
k8s=$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$here/go.mod")
key=$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" | sha256sum | cut -c1-12)
root=${AOS_CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/aos-operator/control-plane}
out=$root/$k8s-$key
if [ -f "$out/ok" ]; then
	echo "$out/bin"
	exit 0
fi
command -v go >/dev/null || { echo "build.sh: go is not installed (the control plane is built from Go modules)" >&2; exit 1; }
mkdir -p "$root"
# Two runs at once (make test in two clones) build once: the second waits for the first.
exec 9>"$root/.lock"
flock 9
if [ -f "$out/ok" ]; then
	echo "$out/bin"
	exit 0
fi
export GOTOOLCHAIN=local GOFLAGS=-mod=readonly CGO_ENABLED=0
work=$(mktemp -d "$root/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp "$here/go.mod" "$here/go.sum" "$work/"
minor=${k8s#v1.}
minor=${minor%%.*}
version="-X k8s.io/component-base/version.gitVersion=$k8s -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
start=$(date +%s)
echo "build.sh: building kube-apiserver, kube-controller-manager $k8s and etcd into $out (first build: tens of minutes on 2 cores)" >&2
cd "$work"
mkdir bin
go build -trimpath -ldflags="-s -w $version" -o bin/ k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
go build -trimpath -ldflags="-s -w" -o bin/etcd go.etcd.io/etcd/server/v3
for b in kube-apiserver kube-controller-manager; do bin/$b --version >&2; done
bin/etcd --version >&2
rm -rf "$out"
mkdir -p "$out"
mv bin "$out/bin"
cp go.mod go.sum "$out/"
echo "build.sh: built in $(($(date +%s) - start)) s, $(du -sh "$out/bin" | cut -f1) of binaries" >&2
touch "$out/ok"
echo "$out/bin"
