//! gapprobe: find execution gaps of busy threads and catch the trace that explains them.

mod bisect;
mod boot;
mod cli;
mod compare;
mod coresched;
mod detector;
mod exit;
mod guest;
mod initrd_cmd;
mod report;
mod result;
mod signals;
mod trace_session;
mod tsc;
mod user_target;
mod vm_cmd;
mod vm_console;
mod vm_guest_args;
mod vm_images;
mod vm_result;

use std::process::ExitCode;

use clap::Parser;

use bisect::EXIT_ABORT_BISECTION;
use cli::{Cli, Command};
use exit::EXIT_USAGE;

fn main() -> ExitCode {
    if guest::is_init() {
        guest::run_as_init();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version are not errors; everything else is a usage error (2),
            // except under bisect-run: `git bisect run` would take 2 for "bad", so a typo
            // there aborts the bisection instead.
            let code = match (err.use_stderr(), invoked_as_bisect_run()) {
                (false, _) => 0,
                (true, true) => EXIT_ABORT_BISECTION,
                (true, false) => EXIT_USAGE,
            };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Some(Command::Boot(args)) => boot::run(&args),
        Some(Command::Initrd(args)) => initrd_cmd::run(&args),
        Some(Command::Run(args)) => user_target::run(&args),
        Some(Command::Vm(args)) => vm_cmd::run(&args),
        Some(Command::Compare(args)) => compare::run(&args),
        Some(Command::BisectRun(args)) => bisect::run(&args),
        None => user_target::run(&cli.run),
    };
    match result {
        Ok(outcome) => outcome.into(),
        Err(err) => {
            eprintln!("gapprobe: error: {err:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn invoked_as_bisect_run() -> bool {
    std::env::args_os()
        .nth(1)
        .is_some_and(|word| word == "bisect-run")
}
