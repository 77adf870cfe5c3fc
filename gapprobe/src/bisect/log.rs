//! The bisection log: one line per step in `<git dir>/gapprobe-bisect.log`, appended by each
//! step and printed by `--summary`. Line format (times in seconds, gaps in ms):
//!
//! `2026-03-01T12:00:00Z 1a2b3c4d5e6f bad runs=1/3 gaps=1 measured=2.345s worst=1.234ms
//! duration=60.000s wall=95.120s [reason=...]`
//!
//! `runs` = runs made / --repeat, `measured` = the detector's run time summed over the runs
//! (a run that found a gap counts until its gap), `worst` = the largest gap seen (`-` when no
//! run finished), `duration` = --duration, `wall` = the whole step with build and boots,
//! `reason` (always last) = why the step skipped or aborted.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::verdict::Verdict;

pub const LOG_NAME: &str = "gapprobe-bisect.log";

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub at: SystemTime,
    pub revision: String,
    pub verdict: Verdict,
    pub runs: u32,
    pub repeat: u32,
    pub gaps: u32,
    pub measured: Duration,
    pub worst_gap_ns: Option<u64>,
    pub duration: Duration,
    pub wall: Duration,
    pub reason: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}, line {line_no}: {cause}: {line:?}", path.display())]
    Line {
        path: PathBuf,
        line_no: usize,
        line: String,
        cause: String,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} runs={}/{} gaps={} measured={:.3}s worst=",
            humantime::format_rfc3339_seconds(self.at),
            self.revision,
            self.verdict.word(),
            self.runs,
            self.repeat,
            self.gaps,
            self.measured.as_secs_f64(),
        )?;
        match self.worst_gap_ns {
            Some(ns) => write!(f, "{:.3}ms", ns as f64 / 1e6)?,
            None => write!(f, "-")?,
        }
        write!(
            f,
            " duration={:.3}s wall={:.3}s",
            self.duration.as_secs_f64(),
            self.wall.as_secs_f64()
        )?;
        if let Some(reason) = &self.reason {
            // One step, one line, whatever the reason says.
            write!(f, " reason={}", reason.replace(['\n', '\r'], " "))?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Step {
    type Err = String;

    fn from_str(line: &str) -> Result<Self, String> {
        let (fields, reason) = match line.split_once(" reason=") {
            Some((fields, reason)) => (fields, Some(reason.to_string())),
            None => (line, None),
        };
        let mut words = fields.split_whitespace();
        let mut next = |what: &str| words.next().ok_or(format!("no {what}"));
        let at = humantime::parse_rfc3339(next("time")?).map_err(|err| format!("time: {err}"))?;
        let revision = next("revision")?.to_string();
        let verdict_word = next("verdict")?;
        let verdict =
            Verdict::from_word(verdict_word).ok_or(format!("unknown verdict {verdict_word:?}"))?;
        let (runs, repeat) = next("runs=")?
            .strip_prefix("runs=")
            .and_then(|runs| runs.split_once('/'))
            .ok_or("no runs=N/M")?;
        let gaps = value(next("gaps=")?, "gaps=", "")?;
        let measured = value(next("measured=")?, "measured=", "s")?;
        let worst = next("worst=")?;
        let worst_gap_ns = match worst {
            "worst=-" => None,
            _ => Some((value::<f64>(worst, "worst=", "ms")? * 1e6).round() as u64),
        };
        let duration = value(next("duration=")?, "duration=", "s")?;
        let wall = value(next("wall=")?, "wall=", "s")?;
        if let Some(extra) = words.next() {
            return Err(format!("unexpected {extra:?}"));
        }
        Ok(Step {
            at,
            revision,
            verdict,
            runs: runs.parse().map_err(|_| "runs: not a number")?,
            repeat: repeat.parse().map_err(|_| "runs: not a number")?,
            gaps,
            measured: seconds(measured)?,
            worst_gap_ns,
            duration: seconds(duration)?,
            wall: seconds(wall)?,
            reason,
        })
    }
}

/// `key=<number><unit>` -> the number.
fn value<T: std::str::FromStr>(word: &str, key: &str, unit: &str) -> Result<T, String> {
    word.strip_prefix(key)
        .and_then(|rest| rest.strip_suffix(unit))
        .and_then(|number| number.parse().ok())
        .ok_or(format!("expected {key}<number>{unit}, got {word:?}"))
}

fn seconds(value: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value).map_err(|err| format!("{value} s: {err}"))
}

pub fn log_path(git_dir: &Path) -> PathBuf {
    git_dir.join(LOG_NAME)
}

/// Appends one step with a single write(2) on an O_APPEND file.
pub fn append(path: &Path, step: &Step) -> Result<(), LogError> {
    let io = |cause| LogError::Io {
        path: path.to_path_buf(),
        cause,
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    file.write_all(format!("{step}\n").as_bytes()).map_err(io)
}

/// Every step of the log, in order; None when there is no log yet.
pub fn read(path: &Path) -> Result<Option<Vec<Step>>, LogError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(cause) => {
            return Err(LogError::Io {
                path: path.to_path_buf(),
                cause,
            })
        }
    };
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            line.parse().map_err(|cause| LogError::Line {
                path: path.to_path_buf(),
                line_no: index + 1,
                line: line.to_string(),
                cause,
            })
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad_step() -> Step {
        Step {
            at: humantime::parse_rfc3339("2026-03-01T12:00:00Z").unwrap(),
            revision: "1a2b3c4d5e6f".into(),
            verdict: Verdict::Bad,
            runs: 2,
            repeat: 3,
            gaps: 1,
            measured: Duration::from_millis(62_345),
            worst_gap_ns: Some(1_234_567),
            duration: Duration::from_secs(60),
            wall: Duration::from_millis(95_120),
            reason: None,
        }
    }

    #[test]
    fn formats_one_line() {
        assert_eq!(
            bad_step().to_string(),
            "2026-03-01T12:00:00Z 1a2b3c4d5e6f bad runs=2/3 gaps=1 measured=62.345s \
             worst=1.235ms duration=60.000s wall=95.120s"
        );
    }

    #[test]
    fn parses_what_it_formats() {
        let mut step = bad_step();
        step.worst_gap_ns = Some(1_235_000); // the line keeps microseconds
        assert_eq!(step.to_string().parse::<Step>().unwrap(), step);
        let skip = Step {
            verdict: Verdict::Skip,
            runs: 0,
            gaps: 0,
            measured: Duration::ZERO,
            worst_gap_ns: None,
            reason: Some("build failed: --build exited 2\nsecond line".into()),
            ..bad_step()
        };
        let line = skip.to_string();
        assert!(line.ends_with(" worst=- duration=60.000s wall=95.120s reason=build failed: --build exited 2 second line"), "{line}");
        let parsed: Step = line.parse().unwrap();
        assert_eq!(
            parsed.reason.as_deref(),
            Some("build failed: --build exited 2 second line")
        );
        assert_eq!(parsed.worst_gap_ns, None);
    }

    #[test]
    fn refuses_broken_lines() {
        for (line, why) in [
            ("", "no time"),
            ("yesterday abc good", "time"),
            ("2026-03-01T12:00:00Z abc maybe runs=1/1", "unknown verdict"),
            ("2026-03-01T12:00:00Z abc good runs=1", "runs=N/M"),
            (
                "2026-03-01T12:00:00Z abc good runs=1/1 gaps=x measured=1s",
                "expected gaps=",
            ),
        ] {
            let err = line.parse::<Step>().unwrap_err();
            assert!(err.contains(why), "{line:?}: {err}");
        }
    }

    #[test]
    fn appends_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_path(dir.path());
        assert_eq!(read(&path).unwrap(), None);
        let mut step = bad_step();
        step.worst_gap_ns = Some(2_000_000);
        append(&path, &step).unwrap();
        append(&path, &step).unwrap();
        assert_eq!(read(&path).unwrap(), Some(vec![step.clone(), step]));
        std::fs::write(&path, "garbage\n").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("garbage"), "{err}");
    }
}
