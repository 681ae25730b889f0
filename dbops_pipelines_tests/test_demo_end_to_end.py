"""The README's demo, end to end: webserver and daemon up, a backup launched through the
GraphQL API (as the UI does) succeeds, and Ctrl-C stops everything the demo started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from dbops_pipelines.localdev.ports import free_port
from dbops_pipelines_tests.dagster_ui import graphql, launch_job, location_name, wait_for, wait_for_run


def test_demo_serves_ui_runs_a_backup_and_stops_on_ctrl_c(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    demo = subprocess.Popen([sys.executable, "-m", "dbops_pipelines.localdev.demo", "--dir", str(tmp_path / "demo"),
                             "--rows", "500", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output: list[str] = []
    try:
        def ready():
            line = demo.stdout.readline()
            output.append(line)
            assert demo.poll() is None or line, "".join(output)
            return f"Dagster UI: {url}" in line
        wait_for(ready, 180, "the demo to print the UI address")

        location = location_name(url)
        assert wait_for_run(url, launch_job(url, "backup_app")) == "SUCCESS"
        # the store root, then its backup namespace
        assert any((tmp_path / "demo" / "backups" / "backups" / "app").glob("*/manifest.json"))
        schedules = graphql(url, """{ repositoryOrError(repositorySelector: {repositoryLocationName: "%s",
            repositoryName: "__repository__"}) { ... on Repository { schedules { name scheduleState { status } } } } }""" % location)
        assert {"name": "backup_app_schedule", "scheduleState": {"status": "RUNNING"}} in schedules["repositoryOrError"]["schedules"]
    finally:
        os.kill(demo.pid, signal.SIGINT)
        try:
            demo.wait(timeout=60)
        finally:
            if demo.poll() is None:
                os.killpg(demo.pid, signal.SIGKILL)
    rest = demo.stdout.read()
    assert "demo stopped" in rest, "".join(output) + rest
    for pattern in (str(tmp_path / "demo"), f"-p {port}", f"--port {port}"):  # postgres, dagster dev, webserver
        leftovers = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True).stdout
        assert leftovers == "", leftovers
