#!/usr/bin/env bash
# Runs every benchmark in bench/ and prints its table. `make bench` calls this after building.
set -euo pipefail
cd "$(dirname "$0")"
for b in pack.sh oci.sh mount.py cold.py rfs.py boot.py; do
  echo "== $b"
  ./"$b"
done
