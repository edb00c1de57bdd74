//! Backend selection by configuration.

use caravan_gpu::{FINGERPRINT_PERIOD_DEFAULT, Fingerprinter, GpuConfig, GpuError, SimulatedGpus};

#[test]
fn simulated_backend_is_chosen_by_config_and_ignored_ids_apply() {
    let simulated = SimulatedGpus::h200_8x();
    let first_uuid = simulated.fingerprint().gpus[0].uuid.clone();
    let config =
        GpuConfig { ignored_gpu_ids: vec![first_uuid.clone()], simulated: Some(simulated), ..GpuConfig::default() };
    assert_eq!(config.fingerprint_period, FINGERPRINT_PERIOD_DEFAULT);
    let fingerprinter = Fingerprinter::detect(config).unwrap();
    assert_eq!(fingerprinter.backend().map(|b| b.name()), Some("simulated"));
    let devices = fingerprinter.devices();
    assert_eq!(devices[0].instances.len(), 7);
    let stats = fingerprinter.stats();
    assert_eq!(stats.len(), 7);
    assert!(stats.iter().all(|s| s.uuid != first_uuid));
}

#[test]
fn disabled_reports_nothing_and_bad_simulation_is_an_error() {
    let disabled = GpuConfig { enabled: false, simulated: Some(SimulatedGpus::h200_8x()), ..GpuConfig::default() };
    let fingerprinter = Fingerprinter::detect(disabled).unwrap();
    assert!(fingerprinter.backend().is_none());
    assert!(fingerprinter.devices().is_empty());

    let mut bad = SimulatedGpus::h200_8x();
    bad.count = 0;
    let config = GpuConfig { simulated: Some(bad), ..GpuConfig::default() };
    assert!(matches!(Fingerprinter::detect(config), Err(GpuError::InvalidSimulatedConfig { .. })));
}

#[test]
fn nvml_detection_never_fails() {
    // On a machine without NVIDIA software this is the "no GPUs" path; with a GPU, NVML's.
    let fingerprinter = Fingerprinter::detect(GpuConfig::default()).unwrap();
    if let Some(backend) = fingerprinter.backend() {
        assert_eq!(backend.name(), "nvml");
    } else {
        assert!(fingerprinter.devices().is_empty());
    }
}
