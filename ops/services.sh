#!/usr/bin/env bash
# Make sure RabbitMQ (with rabbitmq_management) and Redis run on 127.0.0.1; start them if installed but stopped.
# Exits non-zero with a clear message when one cannot be had.
set -u
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && exec 3>&- 3<&-; }
wait_port() { for _ in $(seq 1 "${2:-60}"); do port_open "$1" && return 0; sleep 1; done; return 1; }
fail() { echo "ops/services.sh: $*" >&2; exit 1; }

if ! port_open 6379; then
  command -v redis-server >/dev/null || fail "Redis is not running on 127.0.0.1:6379 and redis-server is not installed (apt-get install redis-server)."
  echo "starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null \
    || fail "redis-server failed to start"
  wait_port 6379 30 || fail "Redis did not come up on 127.0.0.1:6379"
fi

if ! port_open 5672; then
  command -v rabbitmq-server >/dev/null || fail "RabbitMQ is not running on 127.0.0.1:5672 and rabbitmq-server is not installed (apt-get install rabbitmq-server)."
  echo "starting rabbitmq-server"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  timeout 120 rabbitmqctl await_startup >/dev/null 2>&1 || true
  wait_port 5672 90 || fail "RabbitMQ did not come up on 127.0.0.1:5672 (see /var/log/rabbitmq)"
fi

if ! port_open 15672; then
  command -v rabbitmq-plugins >/dev/null || fail "the RabbitMQ management API (:15672) is not available and rabbitmq-plugins is missing"
  echo "enabling rabbitmq_management"
  rabbitmq-plugins enable rabbitmq_management >/dev/null 2>&1 || fail "could not enable rabbitmq_management"
  wait_port 15672 60 || fail "the RabbitMQ management API did not come up on :15672"
fi
echo "services: redis :6379, rabbitmq :5672, management :15672 are up"
