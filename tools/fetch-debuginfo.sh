#!/usr/bin/env bash
# Fetch the DWARF of the modules the documents need, for one or more kernel releases,
# from Debian's linux-image-RELEASE-dbg (downloaded once, only the needed files kept in
# /var/cache/callpath/debuginfo/RELEASE), and index their inline sites.
#   tools/fetch-debuginfo.sh RELEASE... [-- SPEC|DIR ...]     (default documents: specs/)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
releases=()
while (($#)) && [ "$1" != "--" ]; do releases+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
((${#releases[@]})) || { echo "usage: $0 RELEASE... [-- SPEC|DIR ...]" >&2; exit 2; }
for r in "${releases[@]}"; do
  "$VENV/bin/python" -m callpath.probes.inline "$r" "${@:-specs}"
done
