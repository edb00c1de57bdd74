# The smallest useful job: run /bin/echo once.
job "hello" {
  type        = "batch"
  datacenters = ["dc1"]

  group "hello" {
    count = 1

    task "echo" {
      driver = "raw_exec"

      config {
        command = "/bin/echo"
        args    = ["hello from caravan"]
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
