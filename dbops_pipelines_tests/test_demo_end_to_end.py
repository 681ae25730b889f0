"""The README's demo, end to end: webserver and daemon up under the project's code location, the
first backup taken and the backup_app run it launches through the GraphQL API (as the UI does)
succeeding, the key and env file a user needs for the CLI, alerts in the file sink, and Ctrl-C
stopping everything the demo started."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys

import pytest

from dbops_pipelines.config import load_config
from dbops_pipelines.config_sinks import FileSinkSettings
from dbops_pipelines.localdev.demo import demo_key, write_env_file
from dbops_pipelines.localdev.ports import free_port
from dbops_pipelines_tests.dagster_ui import graphql, location_name, wait_for, wait_for_run

DBOPS = os.path.join(os.path.dirname(sys.executable), "dbops")


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_demo_serves_ui_runs_a_backup_and_stops_on_ctrl_c(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    demo_dir = tmp_path / "demo"
    demo = subprocess.Popen([sys.executable, "-m", "dbops_pipelines.localdev.demo", "--dir", str(demo_dir),
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
        wait_for(lambda: ready() or "Press Ctrl-C" in output[-1], 30, "the rest of the demo's instructions")
        printed = "".join(output)

        # the code location is named after the project (workspace.yaml), not after a module
        location = location_name(url)
        assert location == "dbops_pipelines"
        # the first backup: taken before Dagster started, then backup_app launched through GraphQL
        assert re.search(r"first backup: app-\S+ \(taken before Dagster starts", printed), printed
        first_run = re.search(rf"backup_app run \(the asset's materialization\): {re.escape(url)}/runs/(\S+)", printed)
        assert first_run, printed
        assert wait_for_run(url, first_run[1]) == "SUCCESS"

        # the key, kept 0600 in the demo's folder, and env.sh that gives the CLI what it needs
        key_file, env_file = demo_dir / "backup.key", demo_dir / "env.sh"
        assert mode(key_file) == 0o600 and mode(env_file) == 0o600
        key = key_file.read_text().strip()
        assert len(base64.b64decode(key, validate=True)) == 32
        assert key not in env_file.read_text()                  # read from backup.key, not copied
        for command in (f"source {env_file}", "dbops backups list", "dbops verify app", "dbops alerts"):
            assert command in printed, printed
        clean_env = {k: v for k, v in os.environ.items() if not k.startswith("DBOPS_")}
        listed = subprocess.run(["bash", "-c", f"source {shlex.quote(str(env_file))} && {DBOPS} backups list --json"],
                                cwd=tmp_path, env=clean_env, capture_output=True, text=True, timeout=120)
        assert listed.returncode == 0, listed.stderr
        backups = json.loads(listed.stdout)
        assert len(backups) >= 2 and all(b["status"] == "valid" and b["target"] == "app" for b in backups)

        # alerts go to the file sink next to dbops.yaml; the sensor's first look found a backup
        cfg = load_config(demo_dir / "dbops.yaml")
        assert cfg.alerts.sinks == [FileSinkSettings(kind="file", path=str(demo_dir / "alerts.jsonl"),
                                                     min_severity="info")]
        assert cfg.alerts.ui_base_url == url
        assert f"alerts: appended to {demo_dir / 'alerts.jsonl'}" in printed
        alerts_file = demo_dir / "alerts.jsonl"

        def alert_lines():
            return alerts_file.exists() and [json.loads(line) for line in alerts_file.read_text().splitlines()]
        lines = wait_for(alert_lines, 90, "the alert sensor to write to the file sink")
        assert ("firing", "app/verification_stale") in [(a["event"], a["alert"]["key"]) for a in lines]
        assert "app/backup_stale" not in [a["alert"]["key"] for a in lines]
        assert mode(alerts_file) == 0o600

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


# --- the key and env files, without starting anything --------------------------------------------

def test_demo_key_is_made_once_0600_and_kept(tmp_path):
    key, created = demo_key(tmp_path)
    assert created and mode(tmp_path / "backup.key") == 0o600
    assert (tmp_path / "backup.key").read_text() == key + "\n"
    again, created = demo_key(tmp_path)
    assert again == key and not created
    (tmp_path / "backup.key").chmod(0o644)       # loosened by hand: tightened again, key kept
    assert demo_key(tmp_path) == (key, False) and mode(tmp_path / "backup.key") == 0o600


def test_a_damaged_demo_key_stops_the_demo_with_what_to_do(tmp_path):
    (tmp_path / "backup.key").write_text("not a key\n")
    with pytest.raises(SystemExit, match="does not hold a key made by `dbops keygen`.*delete it") as err:
        demo_key(tmp_path)
    assert "not a key" not in str(err.value)
    assert (tmp_path / "backup.key").read_text() == "not a key\n"   # never replaced behind the user's back


def test_env_file_exports_the_config_and_the_key_from_its_file(tmp_path):
    folder = tmp_path / "a demo's folder"                             # a space and a quote in the path
    folder.mkdir()
    key, _ = demo_key(folder)
    env_file = write_env_file(folder, folder / "dbops.yaml")
    assert mode(env_file) == 0o600 and key not in env_file.read_text()
    shown = subprocess.run(["bash", "-c", f'source "$1" && printf "%s\\n%s" "$DBOPS_CONFIG" "$DBOPS_BACKUP_KEY"',
                            "-", str(env_file)], capture_output=True, text=True, timeout=30,
                           env={"PATH": os.environ["PATH"]})
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [str(folder / "dbops.yaml"), key]
