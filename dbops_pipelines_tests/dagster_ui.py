"""Test helper: drive a running Dagster webserver through its GraphQL API, as the UI does."""

from __future__ import annotations

import json
import time
import urllib.request


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    req = urllib.request.Request(f"{url}/graphql", data=json.dumps({"query": query, "variables": variables or {}}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)["data"]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def location_name(url: str) -> str:
    loc = graphql(url, "{ workspaceOrError { ... on Workspace { locationEntries { name } } } }")
    return loc["workspaceOrError"]["locationEntries"][0]["name"]


def launch_job(url: str, job: str) -> str:
    launched = graphql(url, """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
            __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }""",
                       {"p": {"selector": {"repositoryLocationName": location_name(url), "repositoryName": "__repository__",
                                           "jobName": job}, "runConfigData": {}}})
    assert launched["launchRun"]["__typename"] == "LaunchRunSuccess", launched
    return launched["launchRun"]["run"]["runId"]


def run_status(url: str, run_id: str) -> str:
    return graphql(url, "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", {"id": run_id})["runOrError"]["status"]


def wait_for_run(url: str, run_id: str, timeout: float = 180) -> str:
    return wait_for(lambda: (s := run_status(url, run_id)) in ("SUCCESS", "FAILURE", "CANCELED") and s, timeout, f"run {run_id}")
