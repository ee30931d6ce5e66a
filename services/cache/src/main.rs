//! The `freshet-cache` binary: see the library for what it does.
use clap::Parser;

fn main() -> std::process::ExitCode {
    let config = freshet_cache::Config::parse();
    let listen = config.listen.clone();
    freshet_server::run_main("freshet-cache", &listen, |listener, shutdown| {
        freshet_cache::run(config, listener, shutdown)
    })
}
