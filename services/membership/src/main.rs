//! The `freshet-membership` binary: see the library for what it does.
use clap::Parser;

fn main() -> std::process::ExitCode {
    let config = freshet_membership::Config::parse();
    let listen = config.listen.clone();
    freshet_server::run_main("freshet-membership", &listen, |listener, shutdown| {
        freshet_membership::run(config, listener, shutdown)
    })
}
