#!/usr/bin/env bash
# Writes the secrets deploy/compose.yaml mounts, once: the master key (KEK) and the pseudonym key,
# each a fresh 256-bit key, mode 0600. They land beside each other in /run/secrets/ inside the
# containers, which is where clinvault looks for pseudonym.key (next to the master key file).
# Back them up somewhere safe and separate from the database backups (docs/operations.md).
set -euo pipefail
cd "$(dirname "$0")"
umask 077
mkdir -p secrets
if [ ! -s secrets/master.key ]; then
  printf '1:%s\n' "$(python3 -c 'import secrets; print(secrets.token_hex(32))')" > secrets/master.key
  echo "wrote deploy/secrets/master.key" >&2
fi
if [ ! -s secrets/pseudonym.key ]; then
  python3 -c 'import secrets; print(secrets.token_hex(32))' > secrets/pseudonym.key
  echo "wrote deploy/secrets/pseudonym.key" >&2
fi
chmod 600 secrets/master.key secrets/pseudonym.key
# Without swarm, compose bind-mounts file secrets with the host's owner: the image runs as uid
# 10001, which must be able to read them (needs root; otherwise run the stack as that uid).
if [ "$(id -u)" = "0" ]; then
  chown 10001:10001 secrets/master.key secrets/pseudonym.key
fi
