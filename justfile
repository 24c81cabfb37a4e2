# Thin recipes around cargo; anything longer belongs in a Rust program.

default: test

build:
    cargo build --workspace --release

test:
    cargo test

lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

fmt:
    cargo fmt --all

# The store benchmark: in-process 3 nodes, fsync on, 1/16/64 writers.
bench:
    cargo bench -p hsu-store

# Real nodes in network namespaces under faults (root). Comes with the cluster-tests issue.
cluster-test:
    @echo "cluster-tests/ does not exist yet (see docs/ROADMAP.md)"; exit 1
