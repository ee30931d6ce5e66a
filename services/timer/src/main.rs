//! The `freshet-timer` binary: see the library for what it does.
use clap::Parser;

fn main() -> std::process::ExitCode {
    let config = freshet_timer::Config::parse();
    let listen = config.listen.clone();
    let log_format = config.observability.log_format;
    freshet_server::run_main(
        "freshet-timer",
        &listen,
        log_format,
        |listener, shutdown| freshet_timer::run(config, listener, shutdown),
    )
}
