//! gapprobe: find execution gaps of busy threads and catch the trace that explains them.

mod boot;
mod cli;
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

use cli::{Cli, Command};
use exit::EXIT_USAGE;

fn main() -> ExitCode {
    if guest::is_init() {
        guest::run_as_init();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version are not errors; everything else is a usage error (2).
            let code = if err.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Some(Command::Boot(args)) => boot::run(&args),
        Some(Command::Initrd(args)) => initrd_cmd::run(&args),
        Some(Command::Run(args)) => user_target::run(&args),
        Some(Command::Vm(args)) => vm_cmd::run(&args),
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
