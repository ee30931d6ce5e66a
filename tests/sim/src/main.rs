//! `freshet-sim`: the deterministic simulator of a shard's replication,
//! failover, reconfiguration, sealing, moves and retention (`just sim`).
//! Each seed fixes one run — every message delay, drop and duplicate,
//! every crash, torn write and failed fsync, every partition, every
//! membership, Postgres and timer outage, every clock drift and jump — and
//! a failing seed replays exactly (`just sim SEED=<seed>`).
//! `docs/simulation.md` says what runs for real and what is modelled.

mod checks;
mod rng;
mod world;

use std::sync::mpsc;
use std::time::Instant;

use clap::Parser;

#[derive(Parser)]
#[command(
    about = "Runs seeds of the deterministic simulation and reports any that break an invariant"
)]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 1_000)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Replay this one seed and print what it did.
    #[arg(long)]
    seed: Option<u64>,
    /// Threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Put hole 1 of issue 13 back (elections sized by the answering
    /// copies, the deposed leader's vote dropped at once), to show the
    /// simulator catches it.
    #[arg(long)]
    reintroduce_hole_1: bool,
    /// Put hole 3 back (a seal completed whatever the close generation),
    /// to show the simulator catches it.
    #[arg(long)]
    reintroduce_hole_3: bool,

    /// Let a leader whose fsync failed forget the batch it sent to its
    /// replicas, to show the simulator catches it.
    #[arg(long)]
    forget_unwritten: bool,
}

/// One seed's run; a panic (in the model or in the code it runs) fails it.
fn run_seed(seed: u64, holes: world::Holes) -> Result<world::Outcome, String> {
    std::panic::catch_unwind(|| {
        let world = world::World::new(seed, holes).map_err(|e| format!("setup failed: {e}"))?;
        world.run()
    })
    .unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        Err(format!("panicked: {message}"))
    })
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let holes = world::Holes {
        hole_1: args.reintroduce_hole_1,
        hole_3: args.reintroduce_hole_3,
        forget_unwritten: args.forget_unwritten,
    };
    if let Some(seed) = args.seed {
        return match run_seed(seed, holes) {
            Ok(outcome) => {
                println!(
                    "seed {seed}: ok: {} calls acknowledged, {} records committed, {} failovers, {} crashes, {} unresolved, {} events",
                    outcome.acknowledged, outcome.committed, outcome.failovers, outcome.crashes, outcome.unresolved, outcome.events
                );
                print!("{}", outcome.end_state);
                std::process::ExitCode::SUCCESS
            }
            Err(violation) => {
                println!("seed {seed}: FAILED: {violation}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1) as u64;
    let started = Instant::now();
    let (sender, results) = mpsc::channel();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let sender = sender.clone();
            let (start, seeds) = (args.start, args.seeds);
            std::thread::spawn(move || {
                let mut i = t;
                while i < seeds {
                    let seed = start + i;
                    let _ = sender.send((seed, run_seed(seed, holes)));
                    i += threads;
                }
            })
        })
        .collect();
    drop(sender);
    let mut total = world::Outcome::default();
    let mut failed: Vec<(u64, String)> = Vec::new();
    let mut done = 0u64;
    for (seed, result) in results {
        done += 1;
        match result {
            Ok(outcome) => {
                if outcome.unresolved > 0 {
                    println!(
                        "seed {seed}: {} calls still unresolved at the end",
                        outcome.unresolved
                    );
                }
                total.acknowledged += outcome.acknowledged;
                total.committed += outcome.committed;
                total.failovers += outcome.failovers;
                total.crashes += outcome.crashes;
                total.seals += outcome.seals;
                total.seals_fenced += outcome.seals_fenced;
                total.absent += outcome.absent;
                total.moves += outcome.moves;
                total.snapshots += outcome.snapshots;
                total.unknown_after_move += outcome.unknown_after_move;
                total.unresolved += outcome.unresolved;
                total.events += outcome.events;
            }
            Err(violation) => {
                println!("seed {seed} FAILED: {violation}");
                failed.push((seed, violation));
            }
        }
        if done.is_multiple_of(1_000) {
            let rate = done as f64 / started.elapsed().as_secs_f64();
            eprintln!("{done} seeds, {rate:.1} seeds/s, {} failed", failed.len());
        }
    }
    for handle in handles {
        let _ = handle.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{} seeds ({}..{}) in {elapsed:.1} s: {:.1} seeds/s on {threads} threads; {} failed",
        args.seeds,
        args.start,
        args.start + args.seeds,
        args.seeds as f64 / elapsed,
        failed.len()
    );
    println!(
        "in all: {} calls acknowledged, {} records committed, {} failovers, {} crashes, {} seals ({} fenced off, {} appends found absent), {} moves ({} calls given up as perhaps written), {} copies restarted at a trim horizon, {} calls unresolved at the end, {} events",
        total.acknowledged, total.committed, total.failovers, total.crashes, total.seals, total.seals_fenced, total.absent, total.moves, total.unknown_after_move, total.snapshots, total.unresolved, total.events
    );
    if failed.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        failed.sort();
        println!(
            "failing seeds (replay one with `just sim SEED=<seed>`): {:?}",
            failed.iter().map(|(s, _)| s).collect::<Vec<_>>()
        );
        std::process::ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::run_seed;
    use crate::world::Holes;

    #[test]
    fn a_few_seeds_keep_every_invariant() {
        for seed in 0..12 {
            if let Err(violation) = run_seed(seed, Holes::default()) {
                panic!("seed {seed}: {violation}");
            }
        }
    }

    // The seeds below change whenever the simulated world does (a new
    // fault draws from the seed's generator): find new ones with
    // `freshet-sim --reintroduce-hole-1` (or `--reintroduce-hole-3`,
    // `--forget-unwritten`) and record them in docs/simulation.md.

    /// The simulator is not blind: with hole 1 of issue 13 put back
    /// (elections sized by the copies that answer, the deposed leader's
    /// vote dropped at once), seed 419 reuses an offset; with the fix it
    /// does not.
    #[test]
    fn the_simulator_catches_hole_1_put_back() {
        let hole_1 = Holes {
            hole_1: true,
            ..Holes::default()
        };
        let caught = run_seed(419, hole_1).expect_err("hole 1 is caught");
        assert!(caught.contains("committed as"), "{caught}");
        if let Err(violation) = run_seed(419, Holes::default()) {
            panic!("seed 419 with the fix: {violation}");
        }
    }

    /// Nor is it blind to sealing: with hole 3 put back (a seal completed
    /// at a stale close generation, after the shard was reopened and
    /// written to), seed 374 closes the shard below records it
    /// committed; with the fence it does not.
    #[test]
    fn the_simulator_catches_hole_3_put_back() {
        let hole_3 = Holes {
            hole_3: true,
            ..Holes::default()
        };
        let caught = run_seed(374, hole_3).expect_err("hole 3 is caught");
        assert!(caught.contains("sealed at"), "{caught}");
        if let Err(violation) = run_seed(374, Holes::default()) {
            panic!("seed 374 with the fence: {violation}");
        }
    }

    /// Nor to a failing disk: a leader whose fsync failed must write the
    /// batch it already sent to its replicas again before anything else.
    /// Let it forget that batch and seed 4 fills the offsets with other
    /// records, which a replica's own check refuses.
    #[test]
    fn the_simulator_catches_a_forgotten_unwritten_batch() {
        let forget = Holes {
            forget_unwritten: true,
            ..Holes::default()
        };
        let caught = run_seed(4, forget).expect_err("the reused offsets are caught");
        assert!(caught.contains("different record"), "{caught}");
        if let Err(violation) = run_seed(4, Holes::default()) {
            panic!("seed 4 as the worker writes it: {violation}");
        }
    }
}
