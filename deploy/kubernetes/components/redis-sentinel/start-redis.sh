#!/bin/sh
# The primary is whoever the sentinels say; with no sentinel answering yet (a first start), redis-0.
set -eu
primary=""
for sentinel in redis-sentinel-0.redis-sentinel redis-sentinel-1.redis-sentinel redis-sentinel-2.redis-sentinel; do
    primary=$(redis-cli -h "$sentinel" -p 26379 --no-auth-warning sentinel get-master-addr-by-name mymaster 2>/dev/null | head -n 1) || true
    [ -n "$primary" ] && break
done
[ -n "$primary" ] || primary="redis-0.redis"
me="$(hostname).redis"
set -- --save "" --appendonly yes --appendfsync everysec --maxmemory "$REDIS_MAXMEMORY" \
    --maxmemory-policy noeviction --requirepass "$REDIS_PASSWORD" --masterauth "$REDIS_PASSWORD" \
    --replica-announce-ip "$me"
case "$primary" in
    "$me"|"$(hostname -i)") exec redis-server "$@" ;;
    *) exec redis-server "$@" --replicaof "$primary" 6379 ;;
esac
