#!/bin/sh
# Start one sentinel of the replicated set (deploy/k8s/redis-ha, deploy/docker-compose.ha.yml).
# Its config is written on the first start only: the sentinel rewrites it with what it learns
# (the current primary, the replicas, the other sentinels, the failover epoch). A sentinel that
# starts afresh learns the current primary from the others' announcements.
#
#   SENTINEL_SELF        how the others reach this sentinel (a host name)
#   SENTINEL_DIR         a writable folder for its config (default: /data)
#   REDIS_FIRST_PRIMARY  the server that is the primary on the first start
#   REDIS_MASTER_NAME    the name to monitor it under (default: lorafarm)
#   SENTINEL_QUORUM, SENTINEL_DOWN_AFTER_MS, SENTINEL_FAILOVER_TIMEOUT_MS (defaults: 2, 5000, 60000)
#   REDIS_PASSWORD       optional: the password of the servers, and of the sentinels themselves
set -eu

dir="${SENTINEL_DIR:-/data}"
name="${REDIS_MASTER_NAME:-lorafarm}"
conf="$dir/sentinel.conf"
if [ ! -s "$conf" ]; then
  cat >"$conf" <<CONF
port 26379
dir "$dir"
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $SENTINEL_SELF
sentinel monitor $name $REDIS_FIRST_PRIMARY 6379 ${SENTINEL_QUORUM:-2}
sentinel down-after-milliseconds $name ${SENTINEL_DOWN_AFTER_MS:-5000}
sentinel failover-timeout $name ${SENTINEL_FAILOVER_TIMEOUT_MS:-60000}
sentinel parallel-syncs $name 1
CONF
  if [ -n "${REDIS_PASSWORD:-}" ]; then
    printf 'sentinel auth-pass %s "%s"\nrequirepass "%s"\n' "$name" "$REDIS_PASSWORD" "$REDIS_PASSWORD" >>"$conf"
  fi
fi
exec redis-server "$conf" --sentinel "$@"
