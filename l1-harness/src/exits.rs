//! What a vCPU exit means: port I/O to the devices, and the events that end the VM.

use std::sync::mpsc::Sender;

use vm_superio::{I8042Device, Trigger};

use crate::acpi::{
    ACPI_X_SLEEP_ENABLE, ACPI_X_SLEEP_TYPE_MASK, ACPI_X_SLEEP_TYPE_POSITION, S5_SLEEP_TYPE,
};
use crate::layout::{
    ACPI_SLEEP_CONTROL_PORT, COM1_PORT_BASE, COM_PORT_SPAN, I8042_COMMAND_PORT, I8042_DATA_PORT,
};
use crate::serial::Com1;

/// Something that ends (or will end) the VM, reported to the VM's event loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// The guest entered ACPI S5 (or KVM reported a shutdown system event).
    PowerOff,
    /// The guest reset the machine (i8042 pulse or KVM reset system event).
    Reset,
    /// The console showed a kernel panic line.
    Panic(String),
    /// A vCPU failed in a way the guest cannot recover from (triple fault, KVM error).
    Crash(String),
    /// The VM's owner asked for the end through a [`crate::VmStopHandle`].
    Stop,
}

/// Sends [`VmEvent::Reset`] when the i8042 sees the CPU reset command.
pub(crate) struct ResetLine(pub(crate) Sender<VmEvent>);

impl Trigger for ResetLine {
    type E = std::sync::mpsc::SendError<VmEvent>;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.send(VmEvent::Reset)
    }
}

/// Reads from ports nobody answers float high, as on a PC bus.
const UNCLAIMED_PORT_VALUE: u8 = 0xff;

/// The devices on the I/O port bus, shared by all vCPU threads.
pub(crate) struct PortBus {
    pub(crate) com1: Com1,
    pub(crate) i8042: I8042Device<ResetLine>,
    pub(crate) events: Sender<VmEvent>,
}

impl PortBus {
    pub(crate) fn write(&mut self, port: u16, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match port {
            _ if (COM1_PORT_BASE..COM1_PORT_BASE + COM_PORT_SPAN).contains(&port) => {
                // A failed interrupt pulse only delays output; the guest retries on timeout.
                let _ = self.com1.write((port - COM1_PORT_BASE) as u8, value);
            }
            I8042_DATA_PORT | I8042_COMMAND_PORT => {
                let _ = self.i8042.write((port - I8042_DATA_PORT) as u8, value);
            }
            ACPI_SLEEP_CONTROL_PORT if is_s5_request(value) => {
                let _ = self.events.send(VmEvent::PowerOff);
            }
            _ => {}
        }
    }

    pub(crate) fn read(&mut self, port: u16, data: &mut [u8]) {
        data.fill(UNCLAIMED_PORT_VALUE);
        match port {
            _ if (COM1_PORT_BASE..COM1_PORT_BASE + COM_PORT_SPAN).contains(&port) => {
                data[0] = self.com1.read((port - COM1_PORT_BASE) as u8);
            }
            I8042_DATA_PORT | I8042_COMMAND_PORT => {
                data[0] = self.i8042.read((port - I8042_DATA_PORT) as u8);
            }
            _ => {}
        }
    }
}

/// A write of SLP_TYP = S5 with SLP_EN set to the sleep control register.
fn is_s5_request(value: u8) -> bool {
    let sleep_type = (value & ACPI_X_SLEEP_TYPE_MASK) >> ACPI_X_SLEEP_TYPE_POSITION;
    value & ACPI_X_SLEEP_ENABLE != 0 && sleep_type == S5_SLEEP_TYPE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_power_off_value_is_s5() {
        // What Linux 6.1 writes at `poweroff -f` with our DSDT (measured in the prototype).
        assert!(is_s5_request(0x34));
        assert!(!is_s5_request(0x14), "SLP_EN missing");
        assert!(!is_s5_request(0x20), "S0 is not power-off");
    }
}
