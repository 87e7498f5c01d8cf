#!/bin/bash
# MongoDB as a single-node replica set, for docker-compose: session-svc replicas need change
# streams, which only a replica set has. With authentication on, the members of a replica set
# prove themselves to each other with a key file readable by mongod alone.
#
#   mongo-replica-set.sh serve   the container's entrypoint: key file in place, then mongod
#   mongo-replica-set.sh check   the health check: initiates the set on first start, then
#                                succeeds once it has a primary
set -euo pipefail

case "${1:-}" in
  serve)
    install -m 400 -o mongodb -g mongodb /run/secrets/mongo_keyfile /data/db/.keyfile
    exec /usr/local/bin/docker-entrypoint.sh mongod --replSet rs0 --bind_ip_all \
      --keyFile /data/db/.keyfile
    ;;
  check)
    password=$(cat /run/secrets/mongo_root_password)
    mongosh --quiet -u root -p "$password" --authenticationDatabase admin --eval '
      try { rs.status().ok } catch (e) {
        rs.initiate({ _id: "rs0", members: [{ _id: 0, host: "mongo:27017" }] }).ok
      }
      quit(db.hello().isWritablePrimary ? 0 : 1)'
    ;;
  *)
    echo "usage: $0 serve|check" >&2
    exit 2
    ;;
esac
