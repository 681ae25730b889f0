"""Test helper: drive a running Dagster webserver through its GraphQL API, as the UI does. The
GraphQL calls themselves live in dbops_pipelines.localdev.dagster_graphql, which the demo uses."""

from __future__ import annotations

from dbops_pipelines.localdev.dagster_graphql import (FINISHED, graphql, launch_job,  # noqa: F401  (re-exported)
                                                      location_name, run_status)
from dbops_pipelines_tests.receivers import wait_for  # noqa: F401  (re-exported for the end-to-end tests)


def wait_for_run(url: str, run_id: str, timeout: float = 180) -> str:
    return wait_for(lambda: (s := run_status(url, run_id)) in FINISHED and s, timeout, f"run {run_id}", interval=0.5)
