"""Drive a `caravan agent -dev` with python-nomad, a third-party Nomad API
client from PyPI: what works with Nomad must work with Caravan.

Usage: python3 nomad_client.py <caravan binary> <hello.nomad.hcl json file>
Prints `N passed, N failed` last; exits non-zero on any failure.
"""

import json
import socket
import subprocess
import sys
import time

import nomad


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, fetch, timeout_s=30):
    """Poll `fetch` until it returns something truthy; None on timeout."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = fetch()
        if value:
            return value
        time.sleep(0.1)
    return None


def service_deployments_scale_and_versions(n, check):
    """A service job whose health is manual: its deployment is listed and
    read, the operator's health request settles it, then the job is scaled
    (python-nomad 2.1.0 has no scale call: its request helper posts it)
    and its versions and scaling events read back."""
    job = {"Job": {"ID": "web", "Type": "service", "TaskGroups": [{
        "Name": "g", "Count": 1,
        "Update": {"HealthCheck": "manual", "MaxParallel": 1},
        "Tasks": [{"Name": "t", "Driver": "raw_exec",
                   "Config": {"command": "/bin/sleep", "args": ["300"]},
                   "Resources": {"CPU": 50, "MemoryMB": 32}}]}]}}
    n.jobs.register_job(job)
    deployment = wait_until("a deployment", lambda: n.job.get_deployment("web"))
    check("job deployment", deployment is not None and deployment["JobID"] == "web")
    if deployment is None:
        return
    listed = n.deployments.get_deployments()
    check("deployments list", any(d["ID"] == deployment["ID"] for d in listed))
    check("deployments prefix", [d["ID"] for d in n.deployments.get_deployments(prefix=deployment["ID"][:6])]
          == [deployment["ID"]])
    check("deployment read", n.deployment.get_deployment(deployment["ID"])["Status"] == "running")
    check("job deployments", [d["ID"] for d in n.job.get_deployments("web")] == [deployment["ID"]])
    allocs = wait_until("placed", lambda: n.deployment.get_deployment_allocations(deployment["ID"]))
    check("deployment allocations", allocs is not None and len(allocs) == 1)
    if allocs:
        n.deployment.deployment_allocation_health(deployment["ID"], healthy_allocations=[allocs[0]["ID"]])
        done = n.deployment.get_deployment(deployment["ID"])
        check("manual health settles the deployment", done["Status"] == "successful")

    scaled = n.job.request("web", "scale", method="post",
                           json={"Count": 2, "Target": {"Group": "g"}, "Message": "python"}).json()
    check("scale returns an EvalID", bool(scaled.get("EvalID")))
    versions = n.job.get_versions("web")["Versions"]
    check("versions newest first", [v["Version"] for v in versions] == [1, 0])
    check("scaled version has the count", versions[0]["TaskGroups"][0]["Count"] == 2)
    status = n.job.request("web", "scale", method="get").json()
    events = status["TaskGroups"]["g"]["Events"]
    check("scaling event recorded", len(events) == 1 and events[0]["Count"] == 2 and events[0]["Message"] == "python")
    # Stop the job and let the client kill its tasks before purging, so no
    # task outlives the agent.
    n.job.deregister_job("web")

    def all_stopped():
        allocs = n.job.get_allocations("web")
        return all(a["ClientStatus"] in ("complete", "failed", "lost") for a in allocs)

    check("stopped job's tasks end", wait_until("stopped", all_stopped) is not None)
    n.job.deregister_job("web", purge=True)


def main():
    binary, job_file = sys.argv[1], sys.argv[2]
    port = free_port()
    agent = subprocess.Popen([binary, "agent", "-dev", "-http-port", str(port)], stdout=subprocess.PIPE)
    passed, failed = 0, 0
    try:
        n = nomad.Nomad(host="127.0.0.1", port=port, timeout=10)
        for _ in range(100):
            try:
                n.status.leader.get_leader()
                break
            except Exception:
                time.sleep(0.1)

        def check(name, condition):
            nonlocal passed, failed
            if condition:
                passed += 1
                print(f"ok   {name}")
            else:
                failed += 1
                print(f"FAIL {name}")

        with open(job_file) as f:
            job = json.load(f)
        registered = n.jobs.register_job(job)
        check("register_job returns an EvalID", bool(registered.get("EvalID")))
        check("jobs list has the job", any(j["ID"] == "hello" for j in n.jobs.get_jobs()))
        check("job reads back", n.job.get_job("hello")["Type"] == "batch")
        evaluation = n.evaluation.get_evaluation(registered["EvalID"])
        check("evaluation reads back", evaluation["JobID"] == "hello")
        check("evaluations list", any(e["ID"] == registered["EvalID"] for e in n.evaluations.get_evaluations()))
        check("allocations list is a list", isinstance(n.allocations.get_allocations(), list))
        check("nodes list is a list", isinstance(n.nodes.get_nodes(), list))
        check("leader", n.status.leader.get_leader() != "")
        n.job.deregister_job("hello", purge=True)
        try:
            n.job.get_job("hello")
            check("purged job is gone", False)
        except nomad.api.exceptions.URLNotFoundNomadException:
            check("purged job is gone", True)
        service_deployments_scale_and_versions(n, check)
        check("agent members", len(n.agent.get_members()["Members"]) == 1)
        check("agent servers", len(n.agent.get_servers()) == 1)
        try:
            n.jobs.register_job({"Job": {"ID": "bad", "Priority": 1000}})
            check("invalid job refused", False)
        except nomad.api.exceptions.BadRequestNomadException as e:
            check("invalid job refused with the reason", "Priority" in e.nomad_resp.text)
    finally:
        agent.terminate()
        agent.wait(timeout=10)
    print(f"python-nomad: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
