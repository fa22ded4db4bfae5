# Shared by scripts/demo and scripts/test: install what is missing, nothing else.
# Packages are installed only when absent: upgrading postgresql-15 under a
# running cluster breaks its replicas (see docs/operations.md).

BATON_PACKAGES="postgresql-15 postgresql-client-15 etcd-server protobuf-compiler"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

ensure_packages() {
    missing=""
    for p in $BATON_PACKAGES; do
        dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        echo "Installing missing packages:$missing"
        # apt can fail transiently (two installs overlapping): retry, bounded.
        for attempt in 1 2 3; do
            if as_root apt-get update -q && \
               as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing; then
                break
            fi
            if [ "$attempt" -eq 3 ]; then
                echo "error: could not install:$missing" >&2
                exit 1
            fi
            echo "apt failed (attempt $attempt), retrying in 5 s" >&2
            sleep 5
        done
    fi
    for tool in etcd protoc pg_config; do
        command -v "$tool" >/dev/null || { echo "error: $tool not on PATH after install" >&2; exit 1; }
    done
    id postgres >/dev/null 2>&1 || { echo "error: OS user postgres missing (postgresql-15 creates it)" >&2; exit 1; }
    command -v cargo >/dev/null || { echo "error: cargo not found; install Rust (rustup) first" >&2; exit 1; }
}
