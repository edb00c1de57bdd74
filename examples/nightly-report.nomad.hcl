# A periodic batch job: the servers launch a child job
# (`nightly-report/periodic-<unix seconds>`) at 02:30 New York time every
# night and at noon on weekdays. A launch is skipped while the previous
# child still runs. `caravan job periodic force nightly-report` launches
# one now.
job "nightly-report" {
  datacenters = ["*"]
  type        = "batch"

  periodic {
    crons            = ["30 2 * * *", "0 12 * * MON-FRI"]
    time_zone        = "America/New_York"
    prohibit_overlap = true
  }

  group "report" {
    task "report" {
      driver = "raw_exec"

      config {
        command = "/bin/sh"
        args    = ["-c", "date; echo report done"]
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
