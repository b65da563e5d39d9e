#!/bin/sh
# A sentinel's config is its state (it rewrites it on failover), so it lives in a writable folder.
set -eu
config=/data/sentinel.conf
if [ ! -f "$config" ]; then
    cat > "$config" <<CONF
port 26379
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $(hostname).redis-sentinel
sentinel monitor mymaster redis-0.redis 6379 2
sentinel auth-pass mymaster $REDIS_PASSWORD
sentinel down-after-milliseconds mymaster 5000
sentinel failover-timeout mymaster 60000
CONF
fi
exec redis-server "$config" --sentinel
