// SPDX-License-Identifier: Apache-2.0 OR MIT
//! The vfio-user front: region and IRQ layout, the `ServerBackend` that
//! forwards to the `Device`, and the accept loop that serves one client
//! after another. Nothing here waits on the engine.

use std::fs::File;
use std::io;
use std::mem::size_of;
use std::os::unix::net::UnixListener;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use vfio_bindings::bindings::vfio::{
    vfio_region_info, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_NORESIZE, VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_TYPE_MASK, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_IRQ_SET_DATA_TYPE_MASK, VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR2_REGION_INDEX,
    VFIO_PCI_BAR4_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user::{DmaMapFlags, DmaUnmapFlags, IrqInfo, Server, ServerBackend, ServerRegion};

use crate::counters::Counters;
use crate::device::Device;
use crate::hw;
use crate::pci::CONFIG_SIZE;

/// Regions declared: BAR 0–5, ROM, config, VGA (QEMU wants at least 8).
pub const NUM_REGIONS: u32 = 9;
/// IRQ types declared: INTx, MSI, MSI-X, ERR, REQ (QEMU wants at least 3).
pub const NUM_IRQ_TYPES: u32 = 5;
/// `VFIO_DMA_UNMAP_FLAG_ALL` as Linux and QEMU define it (bit 1). The
/// crate's `DmaUnmapFlags::UNMAP_ALL` is bit 2, which is wrong.
pub const DMA_UNMAP_FLAG_ALL: u32 = 1 << 1;

/// Errors of the vfio-user front.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The vfio-user crate failed.
    #[error("vfio-user: {0}")]
    VfioUser(#[from] vfio_user::Error),
}

/// The region table.
pub fn regions() -> Vec<ServerRegion> {
    (0..NUM_REGIONS)
        .map(|index| {
            let size = match index {
                VFIO_PCI_BAR0_REGION_INDEX => hw::BAR_REGS_SIZE,
                VFIO_PCI_BAR2_REGION_INDEX => hw::BAR_MSIX_SIZE,
                VFIO_PCI_BAR4_REGION_INDEX => crate::pci::DB_BAR_SIZE,
                VFIO_PCI_CONFIG_REGION_INDEX => CONFIG_SIZE as u64,
                _ => 0,
            };
            let flags = if size > 0 {
                VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
            } else {
                0
            };
            ServerRegion {
                region_info: vfio_region_info {
                    argsz: size_of::<vfio_region_info>() as u32,
                    flags,
                    index,
                    cap_offset: 0,
                    size,
                    offset: 0,
                },
                sparse_areas: Vec::new(),
                mmap_fd: None,
            }
        })
        .collect()
}

/// The IRQ table.
pub fn irqs() -> Vec<IrqInfo> {
    (0..NUM_IRQ_TYPES)
        .map(|index| {
            let (count, flags) = match index {
                VFIO_PCI_INTX_IRQ_INDEX => (1, VFIO_IRQ_INFO_EVENTFD),
                VFIO_PCI_MSIX_IRQ_INDEX => (
                    hw::NUM_VECTORS,
                    VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE,
                ),
                _ => (0, 0),
            };
            IrqInfo {
                index,
                flags,
                count,
            }
        })
        .collect()
}

fn invalid() -> io::Error {
    io::Error::from(io::ErrorKind::InvalidInput)
}

/// The `ServerBackend` of one connection.
pub struct Backend {
    dev: Arc<Device>,
}

impl Backend {
    /// A backend for `dev`.
    pub fn new(dev: Arc<Device>) -> Self {
        Backend { dev }
    }
}

impl ServerBackend for Backend {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        match region {
            VFIO_PCI_BAR0_REGION_INDEX => self.dev.reg_read(offset, data),
            VFIO_PCI_BAR2_REGION_INDEX => self.dev.msix_read(offset, data),
            VFIO_PCI_BAR4_REGION_INDEX => self.dev.db_read(offset, data),
            VFIO_PCI_CONFIG_REGION_INDEX => self.dev.config_read(offset, data),
            _ => Err(invalid()),
        }
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        match region {
            VFIO_PCI_BAR0_REGION_INDEX => self.dev.reg_write(offset, data),
            VFIO_PCI_BAR2_REGION_INDEX => self.dev.msix_write(offset, data),
            VFIO_PCI_BAR4_REGION_INDEX => self.dev.db_write(offset, data),
            VFIO_PCI_CONFIG_REGION_INDEX => self.dev.config_write(offset, data),
            _ => Err(invalid()),
        }
    }

    fn dma_map(
        &mut self,
        flags: DmaMapFlags,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> io::Result<()> {
        let sh = &self.dev.shared;
        let Some(file) = fd else {
            // DMA_READ/DMA_WRITE messages are not available: such a map is
            // unusable; accept it and never touch it
            Counters::inc(&sh.counters.dma_maps_without_fd);
            log::warn!("DMA_MAP {address:#x}+{size:#x} without fd: ignored");
            return Ok(());
        };
        Counters::inc(&sh.counters.dma_maps);
        log::debug!("DMA_MAP {address:#x}+{size:#x} offset {offset:#x} flags {flags:?}");
        sh.dma.map(address, size, file, offset).map_err(|e| {
            // the client may take a failed DMA_MAP for success: say it loudly
            log::error!("DMA_MAP failed: {e}");
            invalid()
        })
    }

    fn dma_unmap(&mut self, flags: DmaUnmapFlags, address: u64, size: u64) -> io::Result<()> {
        let sh = &self.dev.shared;
        Counters::inc(&sh.counters.dma_unmaps);
        if flags.bits() & DMA_UNMAP_FLAG_ALL != 0 {
            log::debug!("DMA_UNMAP all");
            sh.dma.unmap_all();
        } else {
            let n = sh.dma.unmap(address, size);
            log::debug!("DMA_UNMAP {address:#x}+{size:#x}: {n} maps removed");
        }
        sh.trace.record(
            "dma_unmap",
            serde_json::json!({ "address": address, "size": size, "flags": flags.bits() }),
        );
        Ok(())
    }

    fn reset(&mut self) -> io::Result<()> {
        self.dev.reset();
        Ok(())
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<File>,
    ) -> io::Result<()> {
        if index != VFIO_PCI_MSIX_IRQ_INDEX {
            // INTx is declared for QEMU's sake and never raised
            return Ok(());
        }
        let irqs = &self.dev.shared.irqs;
        let data = flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
        let action = flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
        if action != VFIO_IRQ_SET_ACTION_TRIGGER {
            // masking is done by the client's MSI-X emulation
            return Ok(());
        }
        let ok = match data {
            VFIO_IRQ_SET_DATA_NONE if count == 0 => {
                irqs.clear();
                true
            }
            VFIO_IRQ_SET_DATA_EVENTFD if fds.is_empty() => irqs.deassign(start, count),
            VFIO_IRQ_SET_DATA_EVENTFD if fds.len() == count as usize => irqs.assign(start, fds),
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            log::warn!(
                "SET_IRQS index {index} flags {flags:#x} start {start} count {count}: refused"
            );
            Err(invalid())
        }
    }
}

/// Serves vfio-user clients on `listener`, one after another, forever. A
/// client that disconnects, breaks the protocol or makes the crate panic
/// loses its DMA maps and eventfds; the device keeps its state and the next
/// client can connect.
pub fn serve(listener: UnixListener, dev: Arc<Device>) -> Result<(), ServerError> {
    let server = Server::from_owned_fd(listener.into(), true, irqs(), regions());
    loop {
        let mut backend = Backend::new(dev.clone());
        let r = catch_unwind(AssertUnwindSafe(|| server.run(&mut backend)));
        match r {
            Ok(Ok(())) => {
                Counters::inc(&dev.shared.counters.connections);
                log::info!("vfio-user client disconnected");
            }
            Ok(Err(vfio_user::Error::SocketAccept(e))) => {
                log::error!("accept: {e}");
                dev.client_gone();
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
            Ok(Err(e)) => {
                Counters::inc(&dev.shared.counters.connections);
                Counters::inc(&dev.shared.counters.connection_errors);
                log::warn!("vfio-user connection ended: {e}");
            }
            Err(_) => {
                Counters::inc(&dev.shared.counters.connections);
                Counters::inc(&dev.shared.counters.connection_errors);
                log::error!("vfio-user connection ended by a panic in the protocol layer");
            }
        }
        dev.client_gone();
    }
}
