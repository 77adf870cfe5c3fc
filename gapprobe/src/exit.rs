//! Process exit codes, one meaning each, shared by every subcommand so that
//! `git bisect run` and scripts can rely on them.

use std::process::ExitCode;

/// How a subcommand ended. Errors (bad input, missing privileges, broken
/// environment) are not listed here: they travel as `anyhow::Error` and map to
/// [`EXIT_USAGE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No gap over the threshold; a guest powered off cleanly.
    Clean,
    /// A gap over the threshold was found; a guest panicked or hung.
    Failed,
    /// This machine cannot run the test (bisect: skip the commit).
    CannotTest,
    /// Stopped by a signal: 128 + signal number, as a shell reports it.
    Interrupted(i32),
}

pub const EXIT_CLEAN: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
/// `git bisect run` treats 125 as "cannot test this revision".
pub const EXIT_CANNOT_TEST: u8 = 125;

impl Outcome {
    pub fn code(self) -> u8 {
        match self {
            Outcome::Clean => EXIT_CLEAN,
            Outcome::Failed => EXIT_FAILED,
            Outcome::CannotTest => EXIT_CANNOT_TEST,
            Outcome::Interrupted(signal) => 128u8.saturating_add(signal as u8),
        }
    }
}

impl From<Outcome> for ExitCode {
    fn from(outcome: Outcome) -> Self {
        ExitCode::from(outcome.code())
    }
}
