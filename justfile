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

# Real hsu processes against a 3-member etcd (when `etcd` is on PATH): puts, reads, RSS, failover.
# Builds the hsu binary it starts first, so it never measures a stale one.
# Deployments on 3 real nodes: apply -> all ready for 1/10/100 replicas, idle cost with 30 units.
bench-deploy:
    cargo build --release -p hsu-cli
    cargo run --release -p hsu-bench -- deploy

bench-store:
    cargo build --release -p hsu-cli
    cargo run --release -p hsu-bench -- store

# Real nodes in network namespaces under faults (root; needs ip and nft). Every scenario, then a
# table; non-zero exit if a checker fails. ARGS: --seed N, --only t20, --fault-secs S (dev only).
cluster-test *ARGS:
    cargo build -p hsu-cli --features failpoints
    cargo run -p cluster-tests -- {{ARGS}}
