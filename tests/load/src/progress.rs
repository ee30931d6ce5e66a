//! The progress bar while a run goes on (on stderr; hidden when stdout is
//! not a terminal, so piped or `--json` output stays clean).

use std::io::IsTerminal as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::driver::{Live, Plan};

/// A running progress display; [`Progress::finish`] clears it.
pub struct Progress {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Shows the run's time (warm-up plus duration) as a bar, with the
    /// calls answered so far.
    pub fn start(label: &str, plan: &Plan, live: Arc<Live>) -> Progress {
        let total = plan.warmup + plan.duration;
        let bar = ProgressBar::new(u64::try_from(total.as_millis()).unwrap_or(u64::MAX));
        if !std::io::stdout().is_terminal() {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        if let Ok(style) =
            ProgressStyle::with_template("{prefix} [{bar:30}] {elapsed:>4}/{duration:4} {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label.to_owned());
        let ticker = {
            let bar = bar.clone();
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let mut last_ok = 0u64;
                let mut interval = tokio::time::interval(Duration::from_millis(500));
                loop {
                    interval.tick().await;
                    let ok = live.ok.load(Ordering::Relaxed);
                    let errors = live.errors.load(Ordering::Relaxed);
                    let phase = if live.measuring.load(Ordering::Relaxed) {
                        "measuring"
                    } else {
                        "warming up"
                    };
                    bar.set_position(
                        u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    );
                    bar.set_message(format!(
                        "{phase}: {ok} ok, {errors} failed, ~{}/s",
                        (ok - last_ok.min(ok)) * 2
                    ));
                    last_ok = ok;
                }
            })
        };
        Progress { bar, ticker }
    }

    pub fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}
