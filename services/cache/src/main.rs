//! The `freshet-cache` binary: see the library for what it does.
use clap::Parser;

fn main() -> std::process::ExitCode {
    let config = freshet_cache::Config::parse();
    let listen = config.listen.clone();
    let log_format = config.observability.log_format;
    freshet_server::run_main(
        "freshet-cache",
        &listen,
        log_format,
        |listener, shutdown| freshet_cache::run(config, listener, shutdown),
    )
}
