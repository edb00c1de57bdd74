# A replicated web service: dynamic and static ports, placement rules, rolling updates.
variable "image" {
  type        = string
  default     = "nginx:1.27"
  description = "Container image to run."
}

locals {
  service_name = "web"
}

job "web" {
  type        = "service"
  datacenters = ["dc1", "dc2"]

  constraint {
    attribute = "${attr.kernel.name}"
    value     = "linux"
  }

  group "web" {
    count = 3

    network {
      port "http" {
        to = 8080
      }
      port "admin" {
        static = 9090
      }
    }

    affinity {
      attribute = "${node.class}"
      value     = "frontend"
      weight    = 50
    }

    spread {
      attribute = "${node.datacenter}"
      weight    = 100

      target "dc1" {
        percent = 60
      }
      target "dc2" {
        percent = 40
      }
    }

    update {
      max_parallel     = 1
      min_healthy_time = "10s"
      healthy_deadline = "5m"
      auto_revert      = true
    }

    restart {
      attempts = 3
      interval = "30m"
      delay    = "15s"
      mode     = "fail"
    }

    task "server" {
      driver = "docker"

      config {
        image = var.image
        ports = ["http", "admin"]
      }

      env {
        SERVICE = upper(local.service_name)
        ALLOC   = "${NOMAD_ALLOC_ID}"
      }

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }
}
