//! The real NVML backend. Without an NVIDIA library or driver this test skips with
//! a message, unless `CARAVAN_REQUIRE_NVML=1` (set it on GPU machines in CI).

use caravan_gpu::{GpuBackend, GpuError, NvmlBackend, to_node_devices};

#[test]
fn nvml_fingerprint_on_this_machine() {
    let required = std::env::var("CARAVAN_REQUIRE_NVML").is_ok_and(|v| v == "1");
    let backend = match NvmlBackend::try_new() {
        Ok(backend) => backend,
        Err(error @ GpuError::NvmlUnavailable { .. }) if !required => {
            eprintln!("skipping the NVML test: {error} (set CARAVAN_REQUIRE_NVML=1 to make this a failure)");
            return;
        }
        Err(error) => panic!("NVML did not start: {error}"),
    };
    let fingerprint = backend.fingerprint().expect("fingerprint");
    eprintln!("{fingerprint:#?}");
    eprintln!("{:#?}", to_node_devices(&fingerprint, &[]));
    eprintln!("{:#?}", backend.stats().expect("stats"));
    eprintln!("health events: {:?}", backend.poll_health(std::time::Duration::from_millis(100)));
    assert!(!fingerprint.gpus.is_empty(), "NVML loaded but reports no GPU");
    for gpu in &fingerprint.gpus {
        assert!(!gpu.uuid.is_empty());
        assert!(gpu.memory_mib.is_some_and(|m| m > 0) || gpu.mig_enabled, "{gpu:#?}");
        for mig in &gpu.mig_instances {
            assert!(mig.gpu_instance_id.is_some(), "{mig:#?}");
            assert!(mig.compute_instance_id.is_some(), "{mig:#?}");
        }
    }
    eprintln!("MIG placements: {:#?}", fingerprint.mig_placements());
}
