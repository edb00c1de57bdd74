//! GPU support for client agents: NVML fingerprinting (the library is loaded
//! at run time, so machines without NVIDIA drivers report no GPUs), a
//! simulated backend for tests and fleet simulation, conversion to the
//! engine's device model, and per-task device reservation.
//!
//! Not built yet; the engine already schedules device requests against the
//! `NodeDeviceResource` shape this crate will fill.
