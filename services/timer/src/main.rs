//! The `freshet-timer` binary: see the library for what it does.
use clap::Parser;

fn main() -> std::process::ExitCode {
    let config = freshet_timer::Config::parse();
    let listen = config.listen.clone();
    freshet_server::run_main("freshet-timer", &listen, |listener, shutdown| {
        freshet_timer::run(config, listener, shutdown)
    })
}
