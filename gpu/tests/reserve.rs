//! A task's two assigned GPUs as env vars, a Docker request and cgroup device nodes.

use std::path::PathBuf;

use caravan_engine::model::AssignedDevice;
use caravan_gpu::reserve::{NVIDIA_DEVICE_MAJOR, device_nodes};
use caravan_gpu::{
    DeviceNode, DockerDeviceRequest, Fingerprint, GpuBackend, GpuError, MigLayout, SimulatedBackend, SimulatedGpus,
    docker_device_request, visible_devices_env,
};

fn fingerprint(config: SimulatedGpus) -> Fingerprint {
    SimulatedBackend::new(config).unwrap().fingerprint().unwrap()
}

fn assigned(vendor: &str, ids: &[&str]) -> AssignedDevice {
    AssignedDevice {
        task_index: 0,
        vendor: vendor.into(),
        kind: "gpu".into(),
        name: "NVIDIA H200".into(),
        instance_ids: ids.iter().map(|&id| id.into()).collect(),
    }
}

const PROC_DEVICES: &str =
    "Character devices:\n  1 mem\n195 nvidia-frontend\n508 nvidia-uvm\n\nBlock devices:\n  8 sd\n";

#[test]
fn two_assigned_gpus() {
    let fp = fingerprint(SimulatedGpus::h200_8x());
    let (a, b) = (fp.gpus[1].uuid.as_str(), fp.gpus[6].uuid.as_str());
    let devices = [assigned("nvidia", &[a, b]), assigned("amd", &["GPU-not-ours"])];

    let joined = format!("{a},{b}");
    assert_eq!(
        visible_devices_env(&devices),
        [("NVIDIA_VISIBLE_DEVICES".to_owned(), joined.clone()), ("CUDA_VISIBLE_DEVICES".to_owned(), joined)]
    );
    assert_eq!(
        docker_device_request(&devices),
        Some(DockerDeviceRequest {
            driver: "nvidia".into(),
            device_ids: vec![a.to_owned(), b.to_owned()],
            capabilities: vec![vec!["gpu".into()]],
        })
    );
    let node = |path: &str, major, minor| DeviceNode { path: PathBuf::from(path), major, minor };
    assert_eq!(
        device_nodes(&fp, &devices, Some(PROC_DEVICES)).unwrap(),
        [
            node("/dev/nvidia1", NVIDIA_DEVICE_MAJOR, 1),
            node("/dev/nvidia6", NVIDIA_DEVICE_MAJOR, 6),
            node("/dev/nvidiactl", NVIDIA_DEVICE_MAJOR, 255),
            node("/dev/nvidia-uvm", 508, 0),
            node("/dev/nvidia-uvm-tools", 508, 1),
        ]
    );
    // Without /proc/devices the uvm nodes are omitted.
    assert_eq!(device_nodes(&fp, &devices, None).unwrap().len(), 3);
}

#[test]
fn no_nvidia_device_means_nothing_to_reserve() {
    let fp = fingerprint(SimulatedGpus::h200_8x());
    let devices = [assigned("amd", &["GPU-x"])];
    assert!(visible_devices_env(&devices).is_empty());
    assert_eq!(docker_device_request(&devices), None);
    assert!(device_nodes(&fp, &devices, Some(PROC_DEVICES)).unwrap().is_empty());
}

#[test]
fn mig_slices_map_to_their_parent_node_and_unknown_ids_fail() {
    let mut config = SimulatedGpus::h200_8x();
    config.mig = Some(MigLayout { profile: "1g.18gb".into(), slices_per_gpu: 7, memory_mib_per_slice: 16_384 });
    let fp = fingerprint(config);
    let slices = &fp.gpus[3].mig_instances;
    let devices = [assigned("nvidia", &[&slices[0].uuid, &slices[1].uuid])];
    let nodes = device_nodes(&fp, &devices, None).unwrap();
    let paths: Vec<_> = nodes.iter().map(|n| n.path.display().to_string()).collect();
    assert_eq!(paths, ["/dev/nvidia3", "/dev/nvidiactl"]);

    let unknown = [assigned("nvidia", &["GPU-gone"])];
    assert!(matches!(device_nodes(&fp, &unknown, None), Err(GpuError::UnknownInstance { .. })));
}
