#!/usr/bin/env bash
# Start the machine's PostgreSQL cluster (installing it if needed) and print a URL
# for the tests: a superuser with a password on 127.0.0.1.
set -euo pipefail
OPENLOOP_WITH_POSTGRES=1 "$(dirname "$0")/install-deps.sh" >&2
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | grep -q "^$version main"; then
  pg_createcluster "$version" main >&2
fi
if ! pg_lsclusters -h | grep "^$version main" | grep -q online; then
  pg_ctlcluster "$version" main start >&2
fi
port=$(pg_lsclusters -h | awk -v v="$version" '$1==v && $2=="main" {print $3}')
su postgres -c "psql -q -p $port -c \"ALTER USER postgres PASSWORD 'openloop'\"" >&2
echo "postgres://postgres:openloop@127.0.0.1:$port/postgres"
