//! COM1: a 16550 UART (vm-superio) whose interrupt reaches the guest through an irqfd.
//!
//! Linux's 8250 driver writes one FIFO load and then waits for the "transmitter empty"
//! interrupt on IRQ 4 before writing more; without the interrupt, userspace output stalls
//! after a few characters while the kernel's polled console still works.

use kvm_ioctls::VmFd;
use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::console::ConsoleWriter;
use crate::error::VmmError;
use crate::layout::COM1_IRQ;

/// Raises the UART's interrupt line: a write to the eventfd is a pulse on the GSI.
pub(crate) struct IrqLine(EventFd);

impl Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

pub(crate) type Com1 = Serial<IrqLine, NoEvents, ConsoleWriter>;

/// Creates COM1 and wires its interrupt to [`COM1_IRQ`] of the in-kernel IOAPIC.
pub(crate) fn com1(vm: &VmFd, console: ConsoleWriter) -> Result<Com1, VmmError> {
    let irq = EventFd::new(EFD_NONBLOCK).map_err(VmmError::host("eventfd for COM1"))?;
    vm.register_irqfd(&irq, COM1_IRQ)
        .map_err(VmmError::kvm("KVM_IRQFD for COM1"))?;
    Ok(Serial::new(IrqLine(irq), console))
}
