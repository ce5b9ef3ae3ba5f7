#!/usr/bin/env bash
# The hub's module graph: prints which top-level module of hub/src uses
# which (`crate::x` paths), and fails if two modules use each other, if
# anything below `server` uses it, or if anything but the wiring (`server`
# and the command line above it) and the SSE endpoint (`api`) uses `live`:
# the live stream is a pure consumer, fed by the writer's commits and the
# presence broadcasts. ARCHITECTURE.md explains the direction.
set -euo pipefail
cd "$(dirname "$0")/../hub/src"

edges=$(for file in $(find . -name '*.rs'); do
    module=$(echo "$file" | cut -d/ -f2 | sed 's/\.rs$//')
    grep -o 'crate::[a-z_]*' "$file" | sed "s/^crate::/$module /" || true
done | awk '$1 != $2' | sort -u)

echo "$edges" | awk '{print "  " $1 " -> " $2}'
status=0
while read -r from to; do
    if echo "$edges" | grep -qx "$to $from"; then
        echo "cycle: $from and $to use each other" >&2
        status=1
    fi
    if [ "$to" = server ] && ! [[ "$from" =~ ^(cli|main|lib)$ ]]; then
        echo "$from uses server: only cli, main and lib may" >&2
        status=1
    fi
    if [ "$to" = live ] && ! [[ "$from" =~ ^(server|api|cli|main|lib)$ ]]; then
        echo "$from uses live: only the wiring and the SSE endpoint (api) may" >&2
        status=1
    fi
done <<< "$edges"
[ "$status" -eq 0 ] && echo "module graph: no cycles, nothing below server uses it, live is a pure consumer"
exit "$status"
