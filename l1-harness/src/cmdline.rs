//! The kernel command line the guest gets: the user's, plus what the VMM must announce.

/// Builds the guest command line: a serial console unless the user chose a console,
/// `pci=off` (the VM has no PCI; the kernel's probe would print an error on every boot)
/// unless the user chose a `pci=` option, `reboot=k` unless the user chose a `reboot=`
/// method, the user's arguments, and the dump region's guest-physical address and size.
///
/// `reboot=k`: with the default method (ACPI first) Debian's 6.1 kernel printed
/// "reboot: Restarting system" and then hung in this VM; the keyboard controller reset
/// reaches our i8042 at once.
pub fn guest_cmdline(user: &str, dump_region: Option<(u64, u64)>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let user_sets = |key: &str| user.split_whitespace().any(|word| word.starts_with(key));
    if !user_sets("console=") {
        parts.push("console=ttyS0".to_string());
    }
    if !user_sets("pci=") {
        parts.push("pci=off".to_string());
    }
    if !user_sets("reboot=") {
        parts.push("reboot=k".to_string());
    }
    let user = user.trim();
    if !user.is_empty() {
        parts.push(user.to_string());
    }
    if let Some((address, size)) = dump_region {
        parts.push(format!("gapprobe.dump={address:#x},{size:#x}"));
    }
    parts.join(" ")
}

/// Reads `gapprobe.dump=ADDR,SIZE` back from a command line (what the guest side does).
pub fn parse_dump_region(cmdline: &str) -> Option<(u64, u64)> {
    let value = cmdline
        .split_whitespace()
        .find_map(|word| word.strip_prefix("gapprobe.dump="))?;
    let (address, size) = value.split_once(',')?;
    let hex = |text: &str| u64::from_str_radix(text.strip_prefix("0x")?, 16).ok();
    Some((hex(address)?, hex(size)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_console_and_dump_region() {
        assert_eq!(
            guest_cmdline(" quiet  tsc=reliable ", Some((0xd000_0000, 0x400_0000))),
            "console=ttyS0 pci=off reboot=k quiet  tsc=reliable gapprobe.dump=0xd0000000,0x4000000"
        );
        assert_eq!(guest_cmdline("", None), "console=ttyS0 pci=off reboot=k");
    }

    #[test]
    fn keeps_the_users_console() {
        assert_eq!(
            guest_cmdline("console=hvc0 pci=nommconf reboot=t quiet", None),
            "console=hvc0 pci=nommconf reboot=t quiet"
        );
        // A word that merely contains "console=" is not a console choice.
        assert_eq!(
            guest_cmdline("earlyconsole=x", None),
            "console=ttyS0 pci=off reboot=k earlyconsole=x"
        );
    }

    #[test]
    fn dump_region_round_trips() {
        let line = guest_cmdline("quiet", Some((0xd000_0000, 0x10_0000)));
        assert_eq!(parse_dump_region(&line), Some((0xd000_0000, 0x10_0000)));
        assert_eq!(parse_dump_region("gapprobe.dump=12,0x10"), None);
        assert_eq!(parse_dump_region("quiet"), None);
    }
}
