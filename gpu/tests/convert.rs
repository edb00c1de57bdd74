//! Fingerprint → node device groups, on simulated machines.

use std::fmt::Write;

use caravan_engine::model::{DeviceAttribute, NodeDeviceResource};
use caravan_gpu::{
    GpuBackend, MigLayout, SIMULATED_UNHEALTHY_REASON, SimulatedBackend, SimulatedGpus, to_node_devices,
};
use expect_test::{Expect, expect};

fn devices(config: SimulatedGpus, ignored: &[&str]) -> Vec<NodeDeviceResource> {
    let fingerprint = SimulatedBackend::new(config).unwrap().fingerprint().unwrap();
    let ignored: Vec<String> = ignored.iter().map(|s| s.to_string()).collect();
    to_node_devices(&fingerprint, &ignored)
}

fn render(groups: &[NodeDeviceResource]) -> String {
    let mut out = String::new();
    for group in groups {
        writeln!(out, "{}/{}/{}", group.vendor, group.kind, group.name).unwrap();
        for (key, value) in &group.attributes {
            let value = match value {
                DeviceAttribute::Int { value, unit } => format!("{value} {}", unit.as_deref().unwrap_or("")),
                DeviceAttribute::Float { value, unit } => format!("{value} {}", unit.as_deref().unwrap_or("")),
                DeviceAttribute::String(s) => format!("{s:?}"),
                DeviceAttribute::Bool(b) => b.to_string(),
            };
            writeln!(out, "  {key} = {}", value.trim_end()).unwrap();
        }
        for i in &group.instances {
            writeln!(
                out,
                "  {} healthy={} bus={} numa={:?} island={:?}{}",
                i.id,
                i.healthy,
                i.pci_bus_id.as_deref().unwrap_or("-"),
                i.numa_node,
                i.link_island,
                if i.health_description.is_empty() { String::new() } else { format!(" ({})", i.health_description) }
            )
            .unwrap();
        }
    }
    out
}

fn check(groups: &[NodeDeviceResource], expect: Expect) {
    expect.assert_eq(&render(groups));
}

#[test]
fn h200_8x_is_one_group_of_eight() {
    let groups = devices(SimulatedGpus::h200_8x(), &[]);
    assert_eq!(groups.len(), 1);
    let group = &groups[0];
    assert_eq!(&*group.name, "NVIDIA H200");
    assert_eq!(group.healthy_count(), 8);
    assert_eq!(group.attributes["memory"], DeviceAttribute::Int { value: 143_771, unit: Some("MiB".into()) });
    assert_eq!(group.attributes["power"], DeviceAttribute::Int { value: 700, unit: Some("W".into()) });
    let islands: Vec<Option<u16>> = group.instances.iter().map(|i| i.link_island).collect();
    assert_eq!(islands, [0, 0, 0, 0, 1, 1, 1, 1].map(Some));
    let numa: Vec<Option<u16>> = group.instances.iter().map(|i| i.numa_node).collect();
    assert_eq!(numa, [0, 0, 0, 0, 1, 1, 1, 1].map(Some));
    check(
        &groups,
        expect![[r#"
            nvidia/gpu/NVIDIA H200
              bar1 = 262144 MiB
              compute_capability = "9.0"
              cores_clock = 1980 MHz
              cuda_driver_version = "12.4"
              display_state = "Disabled"
              driver_version = "550.90.07"
              memory = 143771 MiB
              memory_clock = 3201 MHz
              pci_bandwidth = 65536 MB/s
              persistence_mode = "Enabled"
              power = 700 W
              GPU-b2414676-977a-2244-afec-2284f7e97f1f healthy=true bus=00000000:10:00.0 numa=Some(0) island=Some(0)
              GPU-af0657f0-a936-ce7f-4012-1da48056628d healthy=true bus=00000000:20:00.0 numa=Some(0) island=Some(0)
              GPU-ae648a9c-996e-8606-5586-f607ed5f00cf healthy=true bus=00000000:30:00.0 numa=Some(0) island=Some(0)
              GPU-7d30c49f-046b-f408-2d41-bb1efe65985a healthy=true bus=00000000:40:00.0 numa=Some(0) island=Some(0)
              GPU-ea35b235-f576-b091-08fc-7e8d170c384a healthy=true bus=00000000:50:00.0 numa=Some(1) island=Some(1)
              GPU-268bcd88-d0ec-2c4c-1ab8-020a79653746 healthy=true bus=00000000:60:00.0 numa=Some(1) island=Some(1)
              GPU-bab31c89-78e8-b260-7147-f13657b999bc healthy=true bus=00000000:70:00.0 numa=Some(1) island=Some(1)
              GPU-c700b9fa-91f9-d809-5bad-ae0c7614a52a healthy=true bus=00000000:80:00.0 numa=Some(1) island=Some(1)
        "#]],
    );
}

#[test]
fn mig_slices_are_their_own_group_and_the_parent_is_not_offered() {
    let mut config = SimulatedGpus::h200_8x();
    config.count = 2;
    config.numa_nodes = 1;
    config.nvlink_island_size = 2;
    config.mig = Some(MigLayout { profile: "1g.18gb".into(), slices_per_gpu: 3, memory_mib_per_slice: 16_384 });
    let groups = devices(config.clone(), &[]);
    let fingerprint = SimulatedBackend::new(config).unwrap().fingerprint().unwrap();
    for gpu in &fingerprint.gpus {
        assert!(groups.iter().all(|g| g.instances.iter().all(|i| *i.id != gpu.uuid)));
    }
    check(
        &groups,
        expect![[r#"
            nvidia/gpu/NVIDIA H200 MIG 1g.18gb
              compute_capability = "9.0"
              cuda_driver_version = "12.4"
              driver_version = "550.90.07"
              memory = 16384 MiB
              mig_profile = "1g.18gb"
              MIG-80f9a8a7-06ee-66f2-fdc4-9f5849c522d6 healthy=true bus=00000000:10:00.0 numa=Some(0) island=None
              MIG-b670b09d-b2c6-1bb7-7980-a17c39cdbb3c healthy=true bus=00000000:10:00.0 numa=Some(0) island=None
              MIG-fa8c7f0f-629c-5fe1-3e09-5cc6589d05af healthy=true bus=00000000:10:00.0 numa=Some(0) island=None
              MIG-504c9637-4aed-207b-66a1-5355cf6a47b4 healthy=true bus=00000000:20:00.0 numa=Some(0) island=None
              MIG-c80db166-2227-18fc-8a35-9f4ba5928df9 healthy=true bus=00000000:20:00.0 numa=Some(0) island=None
              MIG-49356b3b-e827-47cb-d9c7-b51ccfcc2e8d healthy=true bus=00000000:20:00.0 numa=Some(0) island=None
        "#]],
    );
}

#[test]
fn ignored_gpu_is_left_out_and_unhealthy_gpu_says_why() {
    let mut config = SimulatedGpus::h200_8x();
    config.unhealthy = vec![5];
    let fingerprint = SimulatedBackend::new(config.clone()).unwrap().fingerprint().unwrap();
    let ignored_uuid = fingerprint.gpus[2].uuid.clone();
    let groups = devices(config, &[&ignored_uuid]);
    assert_eq!(groups.len(), 1);
    let group = &groups[0];
    assert_eq!(group.instances.len(), 7);
    assert!(group.instances.iter().all(|i| *i.id != ignored_uuid));
    let unhealthy: Vec<_> = group.instances.iter().filter(|i| !i.healthy).collect();
    assert_eq!(unhealthy.len(), 1);
    assert_eq!(&*unhealthy[0].id, fingerprint.gpus[5].uuid);
    assert_eq!(&*unhealthy[0].health_description, SIMULATED_UNHEALTHY_REASON);
    assert_eq!(group.healthy_count(), 6);
    // Islands are of the whole machine: ignoring GPU 2 renumbers nothing.
    let islands: Vec<Option<u16>> = group.instances.iter().map(|i| i.link_island).collect();
    assert_eq!(islands, [0, 0, 0, 1, 1, 1, 1].map(Some));
}

#[test]
fn no_nvlink_means_no_island_and_uuids_differ_per_host() {
    let mut config = SimulatedGpus::h200_8x();
    config.nvlink_island_size = 0;
    let groups = devices(config.clone(), &[]);
    assert!(groups[0].instances.iter().all(|i| i.link_island.is_none()));

    let mut other = config.clone();
    other.host = "sim-node-1".into();
    let a = SimulatedBackend::new(config.clone()).unwrap().fingerprint().unwrap();
    let b = SimulatedBackend::new(other).unwrap().fingerprint().unwrap();
    let again = SimulatedBackend::new(config).unwrap().fingerprint().unwrap();
    assert_eq!(a, again, "same seed and host, same UUIDs");
    for gpu in &a.gpus {
        assert!(b.gpus.iter().all(|other| other.uuid != gpu.uuid));
        assert!(gpu.uuid.starts_with("GPU-") && gpu.uuid.len() == 40, "{}", gpu.uuid);
    }
}
