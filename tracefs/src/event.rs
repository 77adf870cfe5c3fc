//! Trace event specs: `system` (every event of a subsystem) or `system:event`, the syntax of
//! tracefs's `set_event` file, validated against an instance's `events/` directory.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{Result, TracefsError};

/// The per-instance directory holding one subdirectory per event system.
pub(crate) const EVENTS_DIR: &str = "events";
/// The control file, present in every system and event directory, that enables it.
const ENABLE_FILE: &str = "enable";

/// One event system, or one event of a system.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventSpec {
    system: String,
    event: Option<String>,
}

impl EventSpec {
    /// Parses `sched` or `sched:sched_switch`.
    pub fn parse(spec: &str) -> Result<Self> {
        let invalid = |reason| TracefsError::InvalidEventSpec {
            spec: spec.to_string(),
            reason,
        };
        let (system, event) = match spec.split_once(':') {
            Some((system, event)) => (system, Some(event)),
            None => (spec, None),
        };
        check_name(system).map_err(invalid)?;
        if let Some(event) = event {
            check_name(event).map_err(invalid)?;
        }
        Ok(EventSpec {
            system: system.to_string(),
            event: event.map(str::to_string),
        })
    }

    /// Parses a comma-separated list such as `sched,irq,timer:hrtimer_expire_entry`.
    pub fn parse_list(list: &str) -> Result<Vec<Self>> {
        list.split(',')
            .map(|spec| Self::parse(spec.trim()))
            .collect()
    }

    /// The event system (`sched`).
    pub fn system(&self) -> &str {
        &self.system
    }

    /// The event inside the system, or `None` for the whole system.
    pub fn event(&self) -> Option<&str> {
        self.event.as_deref()
    }

    /// The `enable` file of this spec inside an instance directory.
    pub(crate) fn enable_path(&self, instance_dir: &Path) -> PathBuf {
        let mut path = instance_dir.join(EVENTS_DIR).join(&self.system);
        if let Some(event) = &self.event {
            path.push(event);
        }
        path.join(ENABLE_FILE)
    }

    /// Checks that the instance offers this event, naming the missing directory otherwise.
    pub(crate) fn validate(&self, instance_dir: &Path) -> Result<PathBuf> {
        let enable = self.enable_path(instance_dir);
        if enable.is_file() {
            Ok(enable)
        } else {
            let dir = enable.parent().unwrap_or(&enable).to_path_buf();
            Err(TracefsError::UnknownEvent {
                spec: self.to_string(),
                path: dir,
            })
        }
    }
}

/// Event and system names are C identifiers in the kernel; accepting only plain names keeps a
/// spec from escaping the `events/` directory.
fn check_name(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty system or event name");
    }
    if name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(())
    } else {
        Err("names may hold only letters, digits, '_' and '-' (form: system or system:event)")
    }
}

impl FromStr for EventSpec {
    type Err = TracefsError;

    fn from_str(spec: &str) -> Result<Self> {
        Self::parse(spec)
    }
}

impl fmt::Display for EventSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.event {
            Some(event) => write!(f, "{}:{}", self.system, event),
            None => f.write_str(&self.system),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn parses_system_and_system_event() {
        let whole = EventSpec::parse("sched").unwrap();
        assert_eq!((whole.system(), whole.event()), ("sched", None));
        let one = EventSpec::parse("sched:sched_switch").unwrap();
        assert_eq!((one.system(), one.event()), ("sched", Some("sched_switch")));
        assert_eq!(one.to_string(), "sched:sched_switch");
        assert_eq!("irq".parse::<EventSpec>().unwrap().to_string(), "irq");
    }

    #[test]
    fn rejects_malformed_specs() {
        for bad in [
            "",
            ":",
            "sched:",
            ":sched_switch",
            "a:b:c",
            "../x",
            "sched/x",
            "a b",
            ".",
        ] {
            assert!(
                matches!(
                    EventSpec::parse(bad),
                    Err(TracefsError::InvalidEventSpec { .. })
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn parses_lists_with_spaces() {
        let specs = EventSpec::parse_list("sched, irq ,timer:hrtimer_start").unwrap();
        let names: Vec<String> = specs.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["sched", "irq", "timer:hrtimer_start"]);
        assert!(EventSpec::parse_list("sched,,irq").is_err());
    }

    #[test]
    fn validation_finds_enable_files_and_names_missing_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let switch_dir = dir.path().join("events/sched/sched_switch");
        fs::create_dir_all(&switch_dir).unwrap();
        fs::write(dir.path().join("events/sched/enable"), b"0\n").unwrap();
        fs::write(switch_dir.join("enable"), b"0\n").unwrap();

        let whole = EventSpec::parse("sched").unwrap();
        assert_eq!(
            whole.validate(dir.path()).unwrap(),
            dir.path().join("events/sched/enable")
        );
        let one = EventSpec::parse("sched:sched_switch").unwrap();
        assert_eq!(one.validate(dir.path()).unwrap(), switch_dir.join("enable"));

        let missing = EventSpec::parse("sched:no_such_event").unwrap();
        match missing.validate(dir.path()) {
            Err(TracefsError::UnknownEvent { spec, path }) => {
                assert_eq!(spec, "sched:no_such_event");
                assert_eq!(path, dir.path().join("events/sched/no_such_event"));
            }
            other => panic!("expected UnknownEvent, got {other:?}"),
        }
        assert!(EventSpec::parse("nosys")
            .unwrap()
            .validate(dir.path())
            .is_err());
    }
}
