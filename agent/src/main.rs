//! The `caravan` binary. Today it only reports its version: the agent, the
//! CLI verbs and the HTTP API arrive with the server, client and API issues.

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("version") | Some("-version") | Some("--version") => {
            #[allow(clippy::print_stdout)]
            {
                println!("Caravan v{}", env!("CARGO_PKG_VERSION"));
            }
            Ok(())
        }
        Some(other) => anyhow::bail!("unknown command {other:?}: this build only knows `caravan version`"),
        None => anyhow::bail!("usage: caravan version"),
    }
}
