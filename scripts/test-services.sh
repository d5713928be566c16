#!/usr/bin/env bash
# Starts the services the tests use that cannot be started per test: the Docker Engine.
# (sshd and docker-registry are started by the tests themselves on loopback.)
# Does nothing when dockerd is absent, already running, or we are not root: the
# Docker tests then skip, unless FLOTILLA_REQUIRE_DOCKER=1 (set by .ci/run).
set -u
command -v dockerd >/dev/null 2>&1 || exit 0
docker info >/dev/null 2>&1 && exit 0
[ "$(id -u)" = 0 ] || { echo "test-services: dockerd is not running and only root can start it; Docker tests will skip"; exit 0; }
log=${TMPDIR:-/tmp}/flotilla-test-dockerd.log
echo "test-services: starting dockerd (log: $log)"
(setsid dockerd >"$log" 2>&1 &)
for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && exit 0; sleep 1; done
echo "test-services: dockerd did not start:"; tail -n 30 "$log"
exit 1
