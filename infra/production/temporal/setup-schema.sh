#!/bin/sh
# Creates (first run) or upgrades (later runs) Temporal's PostgreSQL schemas.
# Runs in the temporalio/admin-tools image; every step is idempotent.
set -eu
export SQL_PASSWORD="$POSTGRES_PWD"
tool() { temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_SEEDS" -p "$DB_PORT" -u "$POSTGRES_USER" "$@"; }
schema=/etc/temporal/schema/postgresql/v12

until nc -z "$POSTGRES_SEEDS" "$DB_PORT"; do echo "waiting for $POSTGRES_SEEDS:$DB_PORT"; sleep 1; done

for db in temporal temporal_visibility; do
  case "$db" in temporal) dir="$schema/temporal/versioned" ;; *) dir="$schema/visibility/versioned" ;; esac
  tool --db "$db" create || echo "database $db already exists"
  tool --db "$db" setup-schema -v 0.0
  tool --db "$db" update-schema -d "$dir"
done
echo "schemas ready"
