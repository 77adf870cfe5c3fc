//! gapprobe as PID 1 of a guest: the whole userspace of our L1 and L2 guests. It mounts what
//! it needs, loads modules, runs the role the kernel command line names, reports on the
//! console, and powers the guest off. The exit status reaches the host as the last console
//! line, `gapprobe-exit: N`; a panic or an error still ends that way, never in a hang.

pub mod cmdline;
pub mod dump_region;
mod hwlat;
mod hwlat_line;
mod l2_vm;
mod nested;
pub mod nested_result;
mod role_args;
mod system;
mod vm_stats;

use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::cli::RunArgs;
use crate::exit::EXIT_USAGE;
use dump_region::{Region, DUMP_LINE_PREFIX};

/// Console line that carries the guest's exit status to the host.
pub const EXIT_LINE_PREFIX: &str = "gapprobe-exit: ";

/// Where the user role keeps its trace and result before they go to the dump region.
const GUEST_TRACE: &str = "/tmp/gapprobe-trace";
const GUEST_JSON: &str = "/tmp/gapprobe-result.json";

/// True when this process is a guest's init.
pub fn is_init() -> bool {
    std::process::id() == 1
}

/// Runs the guest and powers it off; never returns.
pub fn run_as_init() -> ! {
    std::panic::set_hook(Box::new(|info| {
        println!("gapprobe-guest: panic: {info}");
        println!("{EXIT_LINE_PREFIX}{EXIT_USAGE}");
        system::power_off();
    }));
    let code = match run_role() {
        Ok(code) => code,
        Err(err) => {
            println!("gapprobe-guest: error: {err:#}");
            EXIT_USAGE
        }
    };
    println!("{EXIT_LINE_PREFIX}{code}");
    system::power_off();
}

fn run_role() -> anyhow::Result<u8> {
    system::mount_all()?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("/proc/cmdline")?;
    if let Some(modules) = cmdline::value(&cmdline, "modules") {
        let names: Vec<&str> = modules.split(',').filter(|name| !name.is_empty()).collect();
        system::load_modules(&names)?;
    }
    let args = cmdline::args(&cmdline::value(&cmdline, "args").unwrap_or_default());
    let region = cmdline::value(&cmdline, "dump")
        .map(|value| Region::parse(&value))
        .transpose()?;
    match cmdline::value(&cmdline, "role").as_deref() {
        Some("user") => user_role(&args, region),
        Some("nested") => nested::run(&args, region),
        Some("hwlat") => hwlat::run(&args),
        Some(other) => bail!("gapprobe.role={other}: unknown role (user, nested, hwlat)"),
        None => bail!("no gapprobe.role= on the kernel command line"),
    }
}

/// The user target inside the kernel under test; its trace and JSON go to the dump region.
fn user_role(args: &[String], region: Option<Region>) -> anyhow::Result<u8> {
    let mut run_args = parse_run_args(args)?;
    run_args.dump = PathBuf::from(GUEST_TRACE);
    run_args.json = Some(PathBuf::from(GUEST_JSON));
    let outcome = crate::user_target::run(&run_args)?;
    if let Some(region) = region {
        let trace = std::fs::read(GUEST_TRACE).unwrap_or_default();
        let json = std::fs::read(GUEST_JSON).context("the run's JSON result")?;
        publish_dump(&region, &trace, &json)?;
    }
    Ok(outcome.code())
}

/// Writes the trace and the JSON result into the dump region and tells the host how much of
/// each is there.
fn publish_dump(region: &Region, trace: &[u8], json: &[u8]) -> anyhow::Result<()> {
    let (trace_len, json_len) = region.write(trace, json)?;
    if trace_len < trace.len() {
        println!(
            "gapprobe-guest: note: trace cut to {trace_len} of {} bytes (dump region too small)",
            trace.len()
        );
    }
    println!("{DUMP_LINE_PREFIX}trace={trace_len} json={json_len}");
    Ok(())
}

/// The user role's arguments: exactly those of the host's `gapprobe run`.
#[derive(clap::Parser)]
#[command(name = "user")]
struct UserRoleArgs {
    #[command(flatten)]
    run: RunArgs,
}

fn parse_run_args(args: &[String]) -> anyhow::Result<RunArgs> {
    role_args::parse::<UserRoleArgs>("user", args).map(|parsed| parsed.run)
}
