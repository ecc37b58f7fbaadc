#!/usr/bin/env bash
# Starts keel's server: ./run.sh --port=P --working-dir=D (any `keel serve`
# flags; see `keel serve --help`). Builds the release binary first if it is
# missing (README's set-up command builds it, so the server listens at once).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$here/target/release/keel"
if [ ! -x "$bin" ]; then
  cargo build --release --quiet -p keel-server --manifest-path "$here/Cargo.toml" >&2
fi
exec "$bin" serve "$@"
