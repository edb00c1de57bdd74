# Distributed training: four 8-GPU workers placed together (gang) within one rack.
job "gpu-train" {
  type        = "batch"
  datacenters = ["dc1"]

  group "workers" {
    count         = 4
    gang          = true
    gang_topology = "${meta.rack}"

    task "train" {
      driver = "raw_exec"

      config {
        command = "/usr/local/bin/train"
        args    = ["--world-size", "32"]
      }

      resources {
        cpu    = 16000
        memory = 65536

        device "nvidia/gpu" {
          count = 8

          constraint {
            attribute = "${device.attr.memory}"
            operator  = ">="
            value     = "80 GiB"
          }
        }
      }
    }
  }
}
