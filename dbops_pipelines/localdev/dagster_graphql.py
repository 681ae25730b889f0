"""A running Dagster webserver driven through its GraphQL API, as the UI drives it: enough to
launch a job from the demo (and from tests). Plain HTTP: nothing here imports Dagster."""

from __future__ import annotations

import json
import time
import urllib.request

REPOSITORY = "__repository__"   # the one repository of a Definitions-based code location


class DagsterGraphQLError(RuntimeError):
    """The webserver answered with an error, or not the answer asked for."""


def graphql(url: str, query: str, variables: dict | None = None, timeout: float = 30) -> dict:
    req = urllib.request.Request(f"{url}/graphql", data=json.dumps({"query": query, "variables": variables or {}}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        answer = json.load(resp)
    if answer.get("errors"):
        raise DagsterGraphQLError("; ".join(str(e.get("message", e)) for e in answer["errors"]))
    return answer["data"]


_LOCATIONS = """{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
    locationOrLoadError { __typename ... on PythonError { message } } } } ... on PythonError { message } } }"""


def location_name(url: str) -> str:
    """The name of the first (in the demo and tests, the only) code location."""
    workspace = graphql(url, _LOCATIONS)["workspaceOrError"]
    if workspace["__typename"] != "Workspace" or not workspace["locationEntries"]:
        raise DagsterGraphQLError(f"no code location: {workspace.get('message', workspace['__typename'])}")
    return workspace["locationEntries"][0]["name"]


def wait_for_location(url: str, timeout: float = 120) -> str:
    """Wait until the first code location has loaded; returns its name. Raises with the load
    error when it failed to load (a bad dbops.yaml shows here)."""
    deadline = time.monotonic() + timeout
    while True:
        workspace = graphql(url, _LOCATIONS)["workspaceOrError"]
        entries = workspace.get("locationEntries") or []
        if entries and entries[0]["loadStatus"] == "LOADED":
            loaded = entries[0]["locationOrLoadError"] or {}
            if loaded.get("__typename") == "PythonError":
                raise DagsterGraphQLError(f"code location {entries[0]['name']} failed to load: {loaded['message']}")
            return entries[0]["name"]
        if time.monotonic() > deadline:
            raise DagsterGraphQLError(f"no code location loaded at {url} within {timeout:.0f} s")
        time.sleep(0.5)


def launch_job(url: str, job: str, location: str | None = None) -> str:
    """Launch a run of ``job`` (as the UI's Launch run does); returns its run id."""
    launched = graphql(url, """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
            __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
            ... on Error { message } } }""",
                       {"p": {"selector": {"repositoryLocationName": location or location_name(url),
                                           "repositoryName": REPOSITORY, "jobName": job}, "runConfigData": {}}})
    result = launched["launchRun"]
    if result["__typename"] != "LaunchRunSuccess":
        raise DagsterGraphQLError(f"launching {job} failed: {result['__typename']}: {result.get('message', '')}".rstrip(": "))
    return result["run"]["runId"]


def run_status(url: str, run_id: str) -> str | None:
    """QUEUED, STARTED, SUCCESS, FAILURE, CANCELED...; None for an unknown run."""
    run = graphql(url, "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", {"id": run_id})["runOrError"]
    return run.get("status")


FINISHED = ("SUCCESS", "FAILURE", "CANCELED")
