#!/bin/sh
# Registers the namespace and the search attributes tanren sets on every run.
# Runs in the temporalio/admin-tools image; safe to rerun.
set -eu
ns="${TEMPORAL_NAMESPACE:-default}"

until temporal operator cluster health >/dev/null 2>&1; do echo "waiting for $TEMPORAL_ADDRESS"; sleep 1; done

if ! temporal operator namespace describe --namespace "$ns" >/dev/null 2>&1; then
  temporal operator namespace create --namespace "$ns" --retention "${TEMPORAL_NAMESPACE_RETENTION:-30d}"
fi

# A new namespace takes a few seconds to reach every frontend's cache.
tries=0
until existing="$(temporal operator search-attribute list --namespace "$ns" 2>/dev/null)"; do
  tries=$((tries + 1)); [ "$tries" -lt 60 ] || { echo "namespace $ns not visible after 60s" >&2; exit 1; }
  sleep 1
done
for name in TanrenPipeline TanrenStage TanrenStatus; do
  if printf '%s\n' "$existing" | grep -qw "$name"; then
    echo "search attribute $name exists"
  else
    temporal operator search-attribute create --namespace "$ns" --name "$name" --type Keyword
  fi
done
echo "namespace $ns ready"
