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
