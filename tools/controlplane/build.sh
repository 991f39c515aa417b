#!/usr/bin/env bash
# Builds the test control plane from Go modules into a cache outside the clone, once per version set:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (k8s.io/kubernetes), etcd, helm.
#
#   tools/controlplane/build.sh            build what is missing (a second run only checks: well under a second)
#   tools/controlplane/build.sh --bin-dir  print the bin directory of this version set (no build; the test fixture
#                                          and `make` use it to find the binaries)
#   tools/controlplane/build.sh --check    print the bin directory and exit 0 if it is complete and current, else
#                                          say what is missing and exit 1 (no build; the test fixture uses it)
#   tools/controlplane/build.sh --force    rebuild even if the stamp matches
#
# The cache is ${GANOPS_CONTROLPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ganops/controlplane}/<versions>/bin.
# A bin directory is complete when its .stamp holds the hash of versions.env, the three build modules'
# go.mod/go.sum and build_revision (below): change any of them and the next run rebuilds. Go's own caches
# (GOMODCACHE, GOCACHE) are used as configured, so a rebuild after a version bump recompiles only what changed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/versions.env"

key="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}"
root=${GANOPS_CONTROLPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ganops/controlplane}
bin="$root/$key/bin"

if [[ ${1:-} == --bin-dir ]]; then echo "$bin"; exit 0; fi
force=0; [[ ${1:-} == --force ]] && force=1

# Bump when the way the binaries are built changes (flags below): the stamp then no longer matches.
build_revision=1
stamp=$( (echo "$build_revision"; cd "$here" && cat versions.env kubernetes/go.mod kubernetes/go.sum etcd/go.mod \
  etcd/go.sum helm/go.mod helm/go.sum) | sha256sum | cut -c1-16)
binaries=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd helm)
complete() {
  [[ -f "$bin/.stamp" && $(cat "$bin/.stamp") == "$stamp" ]] || return 1
  for b in "${binaries[@]}"; do [[ -x "$bin/$b" ]] || return 1; done
}
if [[ ${1:-} == --check ]]; then
  if complete; then echo "$bin"; exit 0; fi
  if [[ -f "$bin/.stamp" ]]; then echo "the control plane in $bin was built from other build inputs"
  else echo "the control plane ($key) is not built in $root"; fi
  exit 1
fi
if [[ $force == 0 ]] && complete; then
  echo "controlplane: up to date in $bin"; exit 0
fi

command -v go >/dev/null || { echo "controlplane: no 'go' command on PATH (Go ${GO_MIN:-1.26} is needed)" >&2; exit 1; }
# The modules name go 1.26.0: the machine's Go (1.26.8) builds them. A go.mod asking for more would need
# GOTOOLCHAIN=go1.27.3 exported here (and in .ci/run and the README); none does today.
export GOTOOLCHAIN=${GOTOOLCHAIN:-local} CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
# A shared 2-core machine: at most two compile jobs, at low priority.
jobs=${GANOPS_CONTROLPLANE_JOBS:-2}
build() { nice -n "${GANOPS_CONTROLPLANE_NICE:-10}" go build -p "$jobs" -trimpath "$@"; }

mkdir -p "$bin"
rm -f "$bin/.stamp"
start=$SECONDS
date=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# Kubernetes: the version the binaries report (kubectl version, /version, the emulation version) comes from
# component-base/version, set by ldflags as Kubernetes' own build does (hack/lib/version.sh).
minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
kv=k8s.io/component-base/version
kflags="-s -w -X $kv.gitVersion=$KUBERNETES_VERSION -X $kv.gitMajor=1 -X $kv.gitMinor=$minor"
kflags+=" -X $kv.gitTreeState=clean -X $kv.buildDate=$date"
kflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1"
kflags+=" -X k8s.io/client-go/pkg/version.gitMinor=$minor"
echo "controlplane: building Kubernetes $KUBERNETES_VERSION (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl) into $bin"
(cd "$here/kubernetes" && build -ldflags "$kflags" -o "$bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
echo "controlplane: Kubernetes built ($((SECONDS - start)) s)"

echo "controlplane: building etcd $ETCD_VERSION"
(cd "$here/etcd" && build -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3)
echo "controlplane: etcd built ($((SECONDS - start)) s)"

echo "controlplane: building helm $HELM_VERSION"
hv=helm.sh/helm/${HELM_VERSION%%.*}/internal/version
(cd "$here/helm" && build -ldflags "-s -w -X $hv.version=$HELM_VERSION -X $hv.gitTreeState=clean" -o "$bin/helm" \
  "helm.sh/helm/${HELM_VERSION%%.*}/cmd/helm")
echo "controlplane: helm built ($((SECONDS - start)) s)"

echo "$stamp" > "$bin/.stamp"
"$bin/kubectl" version --client=true | head -1
"$bin/etcd" --version | head -1
"$bin/helm" version --short
echo "controlplane: built in $((SECONDS - start)) s: $bin"
