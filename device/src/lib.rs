// SPDX-License-Identifier: Apache-2.0 OR MIT
//! odp-rnic: an emulated RDMA NIC with switchable On-Demand Paging, served
//! to QEMU over vfio-user. The hardware contract is `docs/hardware.md`; the
//! control protocol is `docs/control.md`.
//!
//! Layout: `server` (vfio-user front) → `device` (register file, config
//! space via `pci`, MSI-X via `irq`) → `engine` (the device's own thread:
//! queues, MR tables from `mr`, page faults, invalidations, remote
//! operations from a `port`) → `dma` (the one place guest memory is
//! touched, checked by the `oracle`). `fault_plan` makes it misbehave on
//! purpose; `control` serves the control socket; `counters` and `trace`
//! record what happened.

#![deny(missing_docs)]

pub mod control;
pub mod counters;
pub mod datapath;
pub mod device;
pub mod dma;
pub mod engine;
pub mod fault_plan;
pub mod fuzz_harness;
pub mod hw;
pub mod irq;
pub mod mr;
pub mod oracle;
pub mod pci;
pub mod peer;
pub mod port;
pub mod server;
pub mod trace;
pub mod verbs;
pub mod wqe;
