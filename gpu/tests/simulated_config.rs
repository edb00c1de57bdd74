//! Simulated GPU configuration: key/value parsing and validation.

use caravan_gpu::{GpuError, MigLayout, SimulatedGpus};

#[test]
fn validate_lists_every_problem() {
    let mut config = SimulatedGpus::h200_8x();
    config.model = " ".into();
    config.count = 6;
    config.memory_mib = 0;
    config.nvlink_island_size = 4;
    config.numa_nodes = 4;
    config.pcie_generation = 9;
    config.mig = Some(MigLayout { profile: String::new(), slices_per_gpu: 0, memory_mib_per_slice: 1 });
    config.unhealthy = vec![1, 6];
    let problems = config.validate();
    assert_eq!(
        problems,
        [
            "model is empty",
            "memory_mib is 0",
            "nvlink_island_size 4 does not divide count 6",
            "numa_nodes 4 does not divide count 6",
            "pcie_generation 9 is not a PCIe generation (1 to 7)",
            "mig profile is empty",
            "mig slices_per_gpu 0 is not between 1 and 16",
            "unhealthy GPU index 6 is not below count 6",
        ]
    );

    let mut empty = SimulatedGpus::h200_8x();
    empty.count = 0;
    empty.numa_nodes = 0;
    assert_eq!(
        empty.validate(),
        [
            "count is 0; a machine without GPUs needs no simulated backend",
            "numa_nodes is 0; every machine has at least one"
        ]
    );
    assert!(SimulatedGpus::h200_8x().validate().is_empty());
}

#[test]
fn key_values_parse_onto_the_h200_preset() {
    let config = SimulatedGpus::from_key_values([
        ("model", "NVIDIA A100-SXM4-80GB"),
        ("count", "4"),
        ("memory_mib", "81920"),
        ("nvlink_island_size", "4"),
        ("numa_nodes", "1"),
        ("mig_profile", "1g.10gb"),
        ("mig_slices_per_gpu", "7"),
        ("mig_memory_mib_per_slice", "9728"),
        ("unhealthy", "0, 3"),
        ("host", "node-17"),
    ])
    .unwrap();
    assert_eq!(config.count, 4);
    assert_eq!(config.power_w, 700, "unset keys keep the preset");
    assert_eq!(config.unhealthy, [0, 3]);
    assert_eq!(config.mig.unwrap().slices_per_gpu, 7);
}

#[test]
fn key_values_report_every_bad_pair() {
    let err = SimulatedGpus::from_key_values([
        ("count", "eight"),
        ("colour", "green"),
        ("mig_profile", "1g.18gb"),
        ("unhealthy", "1,x"),
        ("nvlink_island_size", "3"),
    ])
    .unwrap_err();
    let GpuError::InvalidSimulatedConfig { problems } = err else { panic!("wrong error {err}") };
    assert_eq!(problems.len(), 5, "{problems:#?}");
    assert!(problems[0].starts_with("count = \"eight\": not a non-negative integer"), "{}", problems[0]);
    assert_eq!(problems[1], "unknown key \"colour\"");
    assert_eq!(problems[2], "unhealthy index \"x\" is not an integer");
    assert_eq!(problems[3], "mig_profile, mig_slices_per_gpu and mig_memory_mib_per_slice must be given together");
    assert_eq!(problems[4], "nvlink_island_size 3 does not divide count 8");
}

#[test]
fn stats_derive_from_load_percent() {
    use caravan_gpu::{GpuBackend, SimulatedBackend};
    let config = SimulatedGpus::from_key_values([
        ("count", "2"),
        ("numa_nodes", "1"),
        ("nvlink_island_size", "2"),
        ("load_percent", "60"),
    ])
    .unwrap();
    let backend = SimulatedBackend::new(config.clone()).unwrap();
    let stats = backend.stats().unwrap();
    assert_eq!(stats, backend.stats().unwrap(), "deterministic");
    assert_eq!(stats.len(), 2);
    let first = &stats[0];
    assert_eq!(first.uuid, backend.fingerprint().unwrap().gpus[0].uuid);
    assert_eq!(first.utilization_percent, Some(60));
    assert_eq!(first.memory_utilization_percent, Some(30));
    assert_eq!((first.memory_used_mib, first.memory_total_mib), (Some(143_771 * 60 / 100), Some(143_771)));
    assert_eq!(first.temperature_c, Some(63));
    assert_eq!((first.power_w, first.power_limit_w), (Some(70 + 630 * 60 / 100), Some(700)));
    let idle = SimulatedGpus::h200_8x().stats();
    assert_eq!((idle[0].utilization_percent, idle[0].temperature_c, idle[0].power_w), (Some(0), Some(30), Some(70)));

    let error = SimulatedGpus::from_key_values([("load_percent", "101")]).unwrap_err().to_string();
    assert!(error.contains("load_percent 101 is above 100"), "{error}");
}
