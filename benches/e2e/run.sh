#!/usr/bin/env bash
# End-to-end benchmark (corepost vs the Go baseline vs nginx, and corepost against itself): one
# command per scenario. `benches/e2e/run.sh --help`; see benches/e2e/README.md.
exec python3 "$(dirname "${BASH_SOURCE[0]}")/bench.py" "$@"
