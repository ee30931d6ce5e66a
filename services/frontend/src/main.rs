//! The `freshet-frontend` binary: see the library for what it does.
use clap::Parser;

fn main() -> std::process::ExitCode {
    let config = freshet_frontend::Config::parse();
    let listen = config.listen.clone();
    let log_format = config.observability.log_format;
    freshet_server::run_main(
        "freshet-frontend",
        &listen,
        log_format,
        |listener, shutdown| freshet_frontend::run(config, listener, shutdown),
    )
}
