//! The `freshet-control-plane` binary: see the library for what it does.
use clap::Parser;

fn main() -> std::process::ExitCode {
    let config = freshet_control_plane::Config::parse();
    let listen = config.listen.clone();
    let log_format = config.observability.log_format;
    freshet_server::run_main(
        "freshet-control-plane",
        &listen,
        log_format,
        |listener, shutdown| freshet_control_plane::run(config, listener, shutdown),
    )
}
