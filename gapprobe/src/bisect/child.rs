//! Runs a child (the build, a `gapprobe vm` run) with one of its output streams relayed line
//! by line to our stderr, keeping the last line that matters (the image path, a SKIP reason),
//! and hands a SIGINT/SIGTERM this process receives on to the child, so that it ends through
//! its own cleanup while the step waits for it.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::signals;

/// How often the wait looks for a signal to hand on.
const WAIT_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy)]
pub enum Relayed {
    Stdout,
    Stderr,
}

/// Runs `command` to its end with `relayed` piped to our stderr (the other stream is
/// inherited). Returns its status and the last relayed line for which `keep` is true.
pub fn run_relayed(
    command: &mut Command,
    relayed: Relayed,
    keep: fn(&str) -> bool,
) -> std::io::Result<(ExitStatus, Option<String>)> {
    match relayed {
        Relayed::Stdout => command.stdout(Stdio::piped()),
        Relayed::Stderr => command.stderr(Stdio::piped()),
    };
    let mut child = command.spawn()?;
    let stream: Box<dyn Read + Send> = match relayed {
        Relayed::Stdout => Box::new(child.stdout.take().expect("stdout was piped")),
        Relayed::Stderr => Box::new(child.stderr.take().expect("stderr was piped")),
    };
    let relay = std::thread::spawn(move || relay_lines(stream, keep));
    let status = wait_handing_on_signals(&mut child)?;
    if signals::received().is_some() {
        // The step is over; a grandchild that outlives the child (the `sleep` of a shell
        // that was told to stop) may hold the pipe open: no waiting for it.
        return Ok((status, None));
    }
    // The pipe closes when the child and whatever inherited it are gone.
    let kept = relay.join().unwrap_or(None);
    Ok((status, kept))
}

fn relay_lines(stream: impl Read, keep: fn(&str) -> bool) -> Option<String> {
    let mut kept = None;
    let mut stderr = std::io::stderr();
    for line in BufReader::new(stream).lines().map_while(Result::ok) {
        let _ = writeln!(stderr, "{line}");
        if keep(&line) {
            kept = Some(line);
        }
    }
    kept
}

/// A Ctrl-C reaches the whole foreground process group, so the child often has the signal
/// already; a second SIGINT/SIGTERM only ends gapprobe vm or a shell sooner, which is what
/// was asked. A signal sent to bisect-run alone must still stop the child.
fn wait_handing_on_signals(child: &mut Child) -> std::io::Result<ExitStatus> {
    let mut handed_on = false;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if !handed_on {
            if let Some(signal) = signals::received().and_then(|n| Signal::try_from(n).ok()) {
                // The child may have ended meanwhile: then there is nobody left to tell.
                let _ = kill(Pid::from_raw(child.id() as i32), signal);
                handed_on = true;
            }
        }
        std::thread::sleep(WAIT_POLL);
    }
}
