#!/bin/sh
# Makes the Secrets the Kubernetes manifests ask for, with values no one else has:
#   gateway-tokens      tokens.json, one random bearer token per tenant named (default: team-a)
#   gateway-redis       password, a random Redis password               (the scaled overlay)
#   gateway-redis-tls   tls.crt, tls.key, ca.crt: a CA of its own and Redis's certificate
#                       (gateway-redis, its Service names and localhost)  (the scaled overlay)
# Usage: scripts/k8s-secrets.sh [--dry-run] [--namespace NS] [--single] [TENANT...]
#   --dry-run   print the Secrets as YAML instead of creating them (kubectl apply -f - them later)
#   --single    only gateway-tokens (the single overlay has no Redis)
# Prints each tenant's token on stderr once: keep them, they are not shown again.
# Needs kubectl and openssl. Existing Secrets are left alone (delete one to make it again).
set -eu
namespace=inference-gateway
dry_run=""
single=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --namespace) namespace="$2"; shift 2 ;;
    --single) single=1; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    --*) echo "k8s-secrets.sh: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || set -- team-a
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

secret() {  # secret NAME kubectl-create-secret-arguments...
  name="$1"; shift
  if [ -n "$dry_run" ]; then
    echo "---"
    kubectl create secret generic "$name" --namespace "$namespace" "$@" --dry-run=client -o yaml
  elif kubectl get secret "$name" --namespace "$namespace" >/dev/null 2>&1; then
    echo "k8s-secrets.sh: $name exists already; left as it is" >&2
  else
    kubectl create secret generic "$name" --namespace "$namespace" "$@"
  fi
}

printf '{' > "$work/tokens.json"
separator=""
for tenant in "$@"; do
  token=$(openssl rand -hex 32)
  printf '%s"%s": "%s"' "$separator" "$token" "$tenant" >> "$work/tokens.json"
  separator=", "
  echo "k8s-secrets.sh: tenant $tenant's token: $token" >&2
done
printf '}\n' >> "$work/tokens.json"
secret gateway-tokens --from-file=tokens.json="$work/tokens.json"
if [ -n "$single" ]; then exit 0; fi

openssl rand -hex 32 | tr -d '\n' > "$work/password"
secret gateway-redis --from-file=password="$work/password"

openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=inference-gateway redis CA" \
  -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
names="DNS:gateway-redis,DNS:gateway-redis.$namespace,DNS:gateway-redis.$namespace.svc"
names="$names,DNS:gateway-redis.$namespace.svc.cluster.local,DNS:*.gateway-redis.$namespace.svc.cluster.local"
names="$names,DNS:localhost,IP:127.0.0.1"
openssl req -newkey rsa:2048 -nodes -subj "/CN=gateway-redis" -keyout "$work/tls.key" -out "$work/tls.csr" 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$names" > "$work/ext"
openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial -days 825 \
  -extfile "$work/ext" -out "$work/tls.crt" 2>/dev/null
secret gateway-redis-tls --from-file=tls.crt="$work/tls.crt" --from-file=tls.key="$work/tls.key" \
  --from-file=ca.crt="$work/ca.crt"
