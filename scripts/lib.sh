# Shared by scripts/demo, scripts/test and bench/*: install what is missing,
# nothing else, then prove that every prerequisite actually works.
#
# Packages are installed only when absent: upgrading postgresql-15 under a
# running cluster breaks its replicas (see docs/operations.md).
#
# Why each package is here (docs/install.md, "Building from source"):
#   postgresql-15, postgresql-client-15  the server, pg_ctl, pg_rewind, pg_basebackup
#   etcd-server                          tests and the demo start their own etcd
#   protobuf-compiler                    protoc: etcd-client generates its gRPC code at build time
#   libprotobuf-dev                      google/protobuf/*.proto, imported by etcd's protos;
#                                        protobuf-compiler only *recommends* it, so
#                                        --no-install-recommends leaves it out
BATON_PACKAGES="postgresql-15 postgresql-client-15 etcd-server protobuf-compiler libprotobuf-dev"
# Only scripts/test needs these (ensure_chaos_packages):
#   iproute2, nftables                   the chaos tests: hosts in network namespaces,
#                                        packets dropped by nftables rules
CHAOS_PACKAGES="iproute2 nftables"
# scripts/test and bench/router (ensure_router_packages):
#   haproxy                              the documented HAProxy config is tested and
#                                        benchmarked against the built-in router
ROUTER_PACKAGES="haproxy"
# Only scripts/test (ensure_ui_packages):
#   chromium, chromium-driver            tests/ui.rs drives the /ui dashboard in a real
#                                        headless browser over WebDriver
UI_PACKAGES="chromium chromium-driver"
# Only scripts/test (ensure_patroni):
#   python3, python3-venv                a virtualenv for Patroni's own patronictl (from
#                                        PyPI), which tests/groups.rs points at a
#                                        multi-group cluster
PATRONI_PACKAGES="python3 python3-venv"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Installs the Debian packages named in $@ that are missing. apt can fail
# transiently (two installs overlapping): retried, bounded.
install_missing() {
    missing=""
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
    done
    [ -n "$missing" ] || return 0
    echo "Installing missing packages:$missing"
    for attempt in 1 2 3; do
        if as_root apt-get update -q && \
           as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing; then
            return 0
        fi
        if [ "$attempt" -eq 3 ]; then
            echo "error: could not install:$missing" >&2
            exit 1
        fi
        echo "apt failed (attempt $attempt), retrying in 5 s" >&2
        sleep 5
    done
}

# require PACKAGE WHAT CMD...: fails, naming the Debian package that brings
# WHAT, unless CMD succeeds.
require() {
    require_or "apt-get install $1" "$2" "${@:3}"
}

# require_or FIX WHAT CMD...: fails with FIX as the way out unless CMD succeeds.
require_or() {
    fix=$1 what=$2
    shift 2
    if ! out=$("$@" 2>&1); then
        echo "error: $what does not work: \`$*\` failed:" >&2
        echo "$out" | tail -n 5 | sed 's/^/    /' >&2
        echo "  fix: $fix" >&2
        exit 1
    fi
}

# protoc can only build etcd-client if it finds the well-known types: compile
# a file that imports one, exactly as etcd's protos do.
check_protoc() {
    dir=$(mktemp -d)
    printf 'syntax = "proto3";\nimport "google/protobuf/descriptor.proto";\nmessage M { google.protobuf.FileDescriptorProto f = 1; }\n' >"$dir/check.proto"
    protoc --proto_path="$dir" --descriptor_set_out="$dir/check.pb" "$dir/check.proto"
    status=$?
    rm -rf "$dir"
    return $status
}

ensure_packages() {
    command -v cargo >/dev/null || { echo "error: cargo not found; install Rust (rustup) first" >&2; exit 1; }
    install_missing $BATON_PACKAGES
    require protobuf-compiler "protoc" protoc --version
    require libprotobuf-dev "protoc with the well-known types (google/protobuf/descriptor.proto)" check_protoc
    require etcd-server "etcd" etcd --version
    require postgresql-client-15 "pg_config" pg_config --bindir
    bindir=$(pg_config --bindir)
    for tool in pg_ctl initdb postgres pg_basebackup pg_rewind pg_controldata; do
        require postgresql-15 "$tool" "$bindir/$tool" --version
    done
    require postgresql-15 "the postgres OS user" id postgres
}

ensure_chaos_packages() {
    install_missing $CHAOS_PACKAGES
    require iproute2 "ip (network namespaces)" ip -V
    require nftables "nft" nft --version
}

ensure_router_packages() {
    install_missing $ROUTER_PACKAGES
    require haproxy "haproxy" haproxy -v
}

ensure_ui_packages() {
    install_missing $UI_PACKAGES
    require chromium "chromium" chromium --headless=new --no-sandbox --version
    require chromium-driver "chromedriver" chromedriver --version
}

# cargo-deb builds the .deb from Cargo.toml's [package.metadata.deb]. Pinned,
# so every machine builds the same package layout.
CARGO_DEB_VERSION=3.8.0
ensure_cargo_deb() {
    if cargo deb --version 2>/dev/null | grep -q " $CARGO_DEB_VERSION\$"; then
        return 0
    fi
    echo "Installing cargo-deb $CARGO_DEB_VERSION (crates.io)"
    cargo install --locked --quiet cargo-deb --version "$CARGO_DEB_VERSION"
    require_or "cargo install --locked cargo-deb --version $CARGO_DEB_VERSION" "cargo deb" cargo deb --version
}

# patronictl, pinned, in target/patroni-venv: the outside contract
# (PATRONI-COMPAT.md) is checked with Patroni's own tool.
PATRONI_VERSION=4.1.5
PSYCOPG2_VERSION=2.9.13
ensure_patroni() {
    install_missing $PATRONI_PACKAGES
    venv=target/patroni-venv
    if "$venv/bin/patronictl" version 2>/dev/null | grep -q " $PATRONI_VERSION\$"; then
        return 0
    fi
    echo "Installing patronictl $PATRONI_VERSION (PyPI) into $venv"
    rm -rf "$venv"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "patroni[etcd3]==$PATRONI_VERSION" "psycopg2-binary==$PSYCOPG2_VERSION"
    require_or "pip install patroni[etcd3]==$PATRONI_VERSION" "patronictl" "$venv/bin/patronictl" version
}
