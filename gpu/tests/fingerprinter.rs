//! Backend selection by configuration.

use caravan_gpu::{
    FINGERPRINT_PERIOD_DEFAULT, Fingerprint, Fingerprinter, GpuConfig, GpuError, GpuInfo, MigInstance, MigLayout,
    MigPlacement, SimulatedGpus,
};

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

#[test]
fn each_fingerprint_publishes_the_mig_placements() {
    let mut simulated = SimulatedGpus::h200_8x();
    simulated.count = 2;
    simulated.nvlink_island_size = 2;
    simulated.numa_nodes = 1;
    simulated.mig = Some(MigLayout { profile: "3g.71gb".into(), slices_per_gpu: 2, memory_mib_per_slice: 71_000 });
    let fingerprinter =
        Fingerprinter::detect(GpuConfig { simulated: Some(simulated.clone()), ..GpuConfig::default() }).unwrap();
    let index = fingerprinter.mig_index();
    assert!(index.placements().is_empty(), "nothing before the first fingerprint");
    assert_eq!(fingerprinter.devices().len(), 1);
    let placements = index.placements();
    let fingerprint = simulated.fingerprint();
    let expected: Vec<(String, MigPlacement)> = fingerprint
        .gpus
        .iter()
        .flat_map(|gpu| {
            gpu.mig_instances.iter().enumerate().map(|(slice, mig)| {
                let placement = MigPlacement {
                    parent_minor: gpu.index,
                    gpu_instance_id: u32::try_from(slice).unwrap() + 1,
                    compute_instance_id: 0,
                };
                (mig.uuid.clone(), placement)
            })
        })
        .collect();
    assert_eq!(expected.len(), 4);
    assert_eq!(placements.len(), 4);
    for (uuid, placement) in expected {
        assert_eq!(placements.get(&uuid), Some(&placement), "{uuid}");
    }
}

#[test]
fn mig_instances_without_ids_or_parent_minor_have_no_placement() {
    let mig = |uuid: &str, gpu_instance_id, compute_instance_id| MigInstance {
        uuid: uuid.into(),
        profile: "1g.18gb".into(),
        memory_mib: None,
        gpu_instance_id,
        compute_instance_id,
    };
    let mut with_minor = GpuInfo::new(0, "GPU-a");
    with_minor.minor_number = Some(4);
    with_minor.mig_enabled = true;
    with_minor.mig_instances =
        vec![mig("MIG-full", Some(9), Some(1)), mig("MIG-no-gi", None, Some(0)), mig("MIG-no-ci", Some(3), None)];
    let mut no_minor = GpuInfo::new(1, "GPU-b");
    no_minor.mig_enabled = true;
    no_minor.mig_instances = vec![mig("MIG-orphan", Some(1), Some(0))];
    let fingerprint = Fingerprint { gpus: vec![with_minor, no_minor], ..Fingerprint::default() };
    let placements = fingerprint.mig_placements();
    assert_eq!(placements.len(), 1, "{placements:?}");
    assert_eq!(
        placements.get("MIG-full"),
        Some(&MigPlacement { parent_minor: 4, gpu_instance_id: 9, compute_instance_id: 1 })
    );
}
