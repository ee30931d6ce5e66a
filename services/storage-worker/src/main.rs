//! The `freshet-storage-worker` binary: see the library for what it does.
use clap::Parser;

fn main() -> std::process::ExitCode {
    let config = freshet_storage_worker::Config::parse();
    let listen = config.listen.clone();
    let log_format = config.observability.log_format;
    freshet_server::run_main(
        "freshet-storage-worker",
        &listen,
        log_format,
        |listener, shutdown| freshet_storage_worker::run(config, listener, shutdown),
    )
}
