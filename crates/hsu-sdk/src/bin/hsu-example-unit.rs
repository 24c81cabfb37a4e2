//! An integrated unit in Rust: serves `hsu.core.v1.Core` on `HSU_CORE_ADDR`, reports itself
//! serving, and exits 0 when the agent asks it to shut down. The hsu-sdk tests run it under an
//! agent; it is also the template for a real service.

#[tokio::main]
async fn main() {
    let mut core = match hsu_sdk::Core::start("hsu-example-unit", env!("CARGO_PKG_VERSION")).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    println!("serving hsu.core.v1.Core on {}", core.addr());
    core.set_health(true, "");
    let grace = core.shutdown_requested().await;
    println!("shutdown requested (grace {} ms); exiting cleanly", grace.as_millis());
    core.set_health(false, "shutting down");
    core.stop().await;
}
