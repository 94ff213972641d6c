#!/bin/sh
# Start one Redis server of the replicated set (deploy/k8s/redis-ha, deploy/docker-compose.ha.yml):
# as a replica of the primary the sentinels name now, or, when no sentinel names one (the very
# first start), as the primary if this server is REDIS_FIRST_PRIMARY and as its replica if not.
# So a server that comes back after a failover, with its old data or none, never serves as the
# primary: it copies the current one.
#
#   REDIS_SELF           how the other servers and the sentinels reach this one (a host name)
#   REDIS_FIRST_PRIMARY  the server that is the primary on the first start
#   REDIS_SENTINELS      the sentinels, host:port, separated by spaces
#   REDIS_MASTER_NAME    the name the sentinels monitor the primary under (default: lorafarm)
#   REDIS_PASSWORD       optional: the password of the servers and of the sentinels
set -eu

master_name="${REDIS_MASTER_NAME:-lorafarm}"
conf=/tmp/redis-ha.conf
if [ -n "${REDIS_PASSWORD:-}" ]; then
  export REDISCLI_AUTH="$REDIS_PASSWORD"
  # In a file, not on the command line, where ps would show it.
  printf 'requirepass "%s"\nmasterauth "%s"\n' "$REDIS_PASSWORD" "$REDIS_PASSWORD" >"$conf"
else
  : >"$conf"
fi

primary=""
for address in $REDIS_SENTINELS; do
  reply="$(redis-cli -h "${address%:*}" -p "${address##*:}" --raw \
    sentinel get-master-addr-by-name "$master_name" 2>/dev/null || true)"
  host="$(printf '%s\n' "$reply" | sed -n 1p)"
  if [ -n "$host" ] && printf '%s\n' "$reply" | sed -n 2p | grep -q '^[0-9][0-9]*$'; then
    primary="$host"
    break
  fi
done
if [ -z "$primary" ]; then
  primary="$REDIS_FIRST_PRIMARY"
  echo "start-redis: no sentinel names a primary yet: $primary is the first"
fi

printf 'replica-announce-ip %s\n' "$REDIS_SELF" >>"$conf"
if [ "$primary" != "$REDIS_SELF" ]; then
  echo "start-redis: starting as a replica of $primary"
  printf 'replicaof %s 6379\n' "$primary" >>"$conf"
else
  echo "start-redis: starting as the primary"
fi

# Append-only (fsync every second): a restarted server keeps what it had. noeviction: a full
# Redis refuses writes (the router answers 503) instead of dropping jobs. A replica that joins
# gets its copy at once (no 5 s wait for more replicas to join the same transfer).
exec redis-server "$conf" --appendonly yes --maxmemory-policy noeviction --repl-diskless-sync-delay 0 "$@"
