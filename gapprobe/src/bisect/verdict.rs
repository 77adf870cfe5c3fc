//! What one `gapprobe vm` run's exit status means for the step, and what the step's verdict
//! tells `git bisect run`.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use crate::exit::{EXIT_CANNOT_TEST, EXIT_CLEAN, EXIT_FAILED, EXIT_USAGE};

/// `git bisect run` aborts the bisection on any exit code above 127 (git-bisect(1)); 128 is
/// the first of them and no shell's "killed by signal N" code (128 + N, N >= 1).
pub const EXIT_ABORT_BISECTION: u8 = 128;

/// How one `gapprobe vm` run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    NoGap,
    Gap,
    /// 125: the kernel did not boot, or this host cannot run the test.
    CannotTest,
    /// Stopped by this signal (exit 128 + N as gapprobe reports it, or killed by it).
    Interrupted(i32),
    /// Anything else, above all 2 (bad options, environment): the same on every revision,
    /// so it must abort the bisection rather than mark the commit bad.
    Broken(String),
}

pub fn run_end(status: ExitStatus) -> RunEnd {
    let Some(code) = status.code() else {
        return match status.signal() {
            Some(signal) => RunEnd::Interrupted(signal),
            None => RunEnd::Broken(format!("ended with {status}")),
        };
    };
    match u8::try_from(code) {
        Ok(EXIT_CLEAN) => RunEnd::NoGap,
        Ok(EXIT_FAILED) => RunEnd::Gap,
        Ok(EXIT_CANNOT_TEST) => RunEnd::CannotTest,
        Ok(EXIT_USAGE) => {
            RunEnd::Broken("exited 2: bad input or environment (its error is above)".into())
        }
        Ok(code) if code == 128 + libc::SIGINT as u8 || code == 128 + libc::SIGTERM as u8 => {
            RunEnd::Interrupted(i32::from(code - 128))
        }
        _ => RunEnd::Broken(format!("exited {code}")),
    }
}

/// A step's verdict, as logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Good,
    Bad,
    Skip,
    Abort,
}

impl Verdict {
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Good => "good",
            Verdict::Bad => "bad",
            Verdict::Skip => "skip",
            Verdict::Abort => "abort",
        }
    }

    pub fn from_word(word: &str) -> Option<Self> {
        [Verdict::Good, Verdict::Bad, Verdict::Skip, Verdict::Abort]
            .into_iter()
            .find(|verdict| verdict.word() == word)
    }
}

/// The verdict of a step whose runs went on while they found no gap: `last` is how the last
/// run ended (None: no run was made). A gap is bad, a run that cannot test skips, a broken or
/// interrupted run aborts; runs that all ended clean are good.
pub fn step_verdict(last: Option<&RunEnd>) -> Verdict {
    match last {
        Some(RunEnd::NoGap) => Verdict::Good,
        Some(RunEnd::Gap) => Verdict::Bad,
        Some(RunEnd::CannotTest) => Verdict::Skip,
        Some(RunEnd::Interrupted(_) | RunEnd::Broken(_)) | None => Verdict::Abort,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn exit_codes_of_gapprobe_vm() {
        assert_eq!(run_end(exited(0)), RunEnd::NoGap);
        assert_eq!(run_end(exited(1)), RunEnd::Gap);
        assert_eq!(run_end(exited(125)), RunEnd::CannotTest);
        assert_eq!(run_end(exited(130)), RunEnd::Interrupted(libc::SIGINT));
        assert_eq!(run_end(exited(143)), RunEnd::Interrupted(libc::SIGTERM));
        assert_eq!(
            run_end(ExitStatus::from_raw(libc::SIGKILL)),
            RunEnd::Interrupted(libc::SIGKILL)
        );
        assert!(matches!(run_end(exited(2)), RunEnd::Broken(why) if why.contains("exited 2")));
        assert!(matches!(run_end(exited(3)), RunEnd::Broken(why) if why == "exited 3"));
    }

    #[test]
    fn verdicts_of_a_step() {
        assert_eq!(step_verdict(Some(&RunEnd::NoGap)), Verdict::Good);
        assert_eq!(step_verdict(Some(&RunEnd::Gap)), Verdict::Bad);
        assert_eq!(step_verdict(Some(&RunEnd::CannotTest)), Verdict::Skip);
        assert_eq!(step_verdict(Some(&RunEnd::Interrupted(2))), Verdict::Abort);
        assert_eq!(
            step_verdict(Some(&RunEnd::Broken("exited 2".into()))),
            Verdict::Abort
        );
        // Zero runs measured nothing: never "good".
        assert_eq!(step_verdict(None), Verdict::Abort);
    }

    #[test]
    fn verdict_words_round_trip() {
        for verdict in [Verdict::Good, Verdict::Bad, Verdict::Skip, Verdict::Abort] {
            assert_eq!(Verdict::from_word(verdict.word()), Some(verdict));
        }
        assert_eq!(Verdict::from_word("old"), None);
    }
}
