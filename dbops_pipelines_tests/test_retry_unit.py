"""The one retry helper (dbops_pipelines/retry.py) and its users' rules: pure logic, no I/O, no
real waiting (``sleep`` is injected)."""

from __future__ import annotations

import psycopg
import pytest

from dbops_pipelines import pgtools
from dbops_pipelines.errors import BackupFailed, DatabaseUnreachable, RestoreFailed
from dbops_pipelines.interrupts import Terminated
from dbops_pipelines.retry import retry_call


class Flaky:
    """Fails with each of ``failures`` in turn, then returns ``result``; counts calls."""

    def __init__(self, *failures: BaseException, result: object = "ok"):
        self.failures, self.result, self.calls = list(failures), result, 0

    def __call__(self):
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return self.result


def test_success_first_time_does_not_sleep():
    sleeps: list[float] = []
    fn = Flaky()
    assert retry_call(fn, attempts=3, backoff_seconds=1, retry_on=(OSError,), sleep=sleeps.append) == "ok"
    assert fn.calls == 1 and sleeps == []


def test_transient_failures_are_retried_with_exponential_backoff():
    sleeps: list[float] = []
    seen: list[tuple[int, str, float]] = []
    fn = Flaky(OSError("down"), TimeoutError("slow"), result=42)
    got = retry_call(fn, attempts=4, backoff_seconds=0.5, retry_on=(OSError,), sleep=sleeps.append,
                     on_retry=lambda n, exc, delay: seen.append((n, str(exc), delay)))
    assert got == 42 and fn.calls == 3
    assert sleeps == [0.5, 1.0]
    assert seen == [(1, "down", 0.5), (2, "slow", 1.0)]


def test_the_last_failure_propagates_unchanged_and_no_sleep_follows_it():
    sleeps: list[float] = []
    last = OSError("third")
    fn = Flaky(OSError("first"), OSError("second"), last)
    with pytest.raises(OSError) as caught:
        retry_call(fn, attempts=3, backoff_seconds=2, retry_on=(OSError,), sleep=sleeps.append)
    assert caught.value is last and fn.calls == 3
    assert sleeps == [2, 4]


def test_the_wait_is_capped():
    sleeps: list[float] = []
    with pytest.raises(OSError):
        retry_call(Flaky(*[OSError()] * 6), attempts=6, backoff_seconds=1, max_backoff_seconds=3,
                   retry_on=(OSError,), sleep=sleeps.append)
    assert sleeps == [1, 2, 3, 3, 3]


def test_other_exception_types_are_not_retried():
    sleeps: list[float] = []
    fn = Flaky(ValueError("a bug, not an outage"))
    with pytest.raises(ValueError, match="a bug"):
        retry_call(fn, attempts=5, backoff_seconds=1, retry_on=(OSError,), sleep=sleeps.append)
    assert fn.calls == 1 and sleeps == []


def test_give_up_on_stops_at_a_permanent_failure():
    sleeps: list[float] = []
    fn = Flaky(OSError("transient"), PermissionError("refused"))
    with pytest.raises(PermissionError, match="refused"):
        retry_call(fn, attempts=5, backoff_seconds=1, retry_on=(OSError,), sleep=sleeps.append,
                   give_up_on=lambda exc: isinstance(exc, PermissionError))
    assert fn.calls == 2 and sleeps == [1]


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), Terminated()])
def test_an_interrupt_is_never_retried(interrupt):
    fn = Flaky(interrupt)
    with pytest.raises(KeyboardInterrupt):
        retry_call(fn, attempts=3, backoff_seconds=1, retry_on=(Exception,), sleep=lambda s: None)
    assert fn.calls == 1


def test_an_interrupt_during_the_wait_ends_it():
    def interrupted_sleep(_seconds):
        raise Terminated()

    fn = Flaky(OSError("down"))
    with pytest.raises(Terminated):
        retry_call(fn, attempts=3, backoff_seconds=1, retry_on=(OSError,), sleep=interrupted_sleep)
    assert fn.calls == 1


@pytest.mark.parametrize("kwargs, error, message", [
    ({"attempts": 0}, ValueError, "attempts >= 1"),
    ({"attempts": True}, ValueError, "attempts >= 1"),
    ({"backoff_seconds": -1}, ValueError, "non-negative"),
    ({"retry_on": ()}, TypeError, "non-empty tuple"),
    ({"retry_on": [OSError]}, TypeError, "non-empty tuple"),
    ({"retry_on": (BaseException,)}, TypeError, "Exception subclasses"),
    ({"retry_on": (KeyboardInterrupt,)}, TypeError, "Exception subclasses"),
])
def test_misuse_is_refused_before_calling(kwargs, error, message):
    fn = Flaky()
    with pytest.raises(error, match=message):
        retry_call(fn, **{"attempts": 2, "backoff_seconds": 1, "retry_on": (OSError,), **kwargs})
    assert fn.calls == 0


def test_default_sleep_is_time_sleep_looked_up_at_call_time(monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr("time.sleep", sleeps.append)
    assert retry_call(Flaky(OSError()), attempts=2, backoff_seconds=0.25, retry_on=(OSError,)) == "ok"
    assert sleeps == [0.25]


# --- pgtools.connect through the helper: outages retried, refusals and bad DSNs not ---------------

DSN = "postgresql://dbops@db1.invalid:5432/app"


@pytest.fixture
def fake_connect(monkeypatch):
    """psycopg.connect replaced by a script of outcomes; time.sleep recorded, never waited."""
    state = {"outcomes": [], "calls": 0, "sleeps": []}

    def fake(dsn, **kwargs):
        state["calls"] += 1
        outcome = state["outcomes"].pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    monkeypatch.setattr(pgtools.psycopg, "connect", fake)
    monkeypatch.setattr("time.sleep", state["sleeps"].append)
    return state


def test_connect_retries_an_outage_then_succeeds(fake_connect):
    conn = object()
    fake_connect["outcomes"] = [psycopg.OperationalError("connection refused"), conn]
    assert pgtools.connect(DSN, "target app", retries=3, backoff=0.5) is conn
    assert fake_connect["calls"] == 2 and fake_connect["sleeps"] == [0.5]


def test_connect_gives_up_after_its_retries_naming_the_attempts(fake_connect):
    fake_connect["outcomes"] = [psycopg.OperationalError("connection refused")] * 3
    with pytest.raises(DatabaseUnreachable, match=r"cannot connect to target app .* after 3 attempts: connection refused"):
        pgtools.connect(DSN, "target app", retries=2, backoff=1)
    assert fake_connect["calls"] == 3 and fake_connect["sleeps"] == [1, 2]


@pytest.mark.parametrize("message", ['password authentication failed for user "dbops"',
                                     "fe_sendauth: no password supplied"])
def test_connect_does_not_retry_a_refused_login(fake_connect, message):
    fake_connect["outcomes"] = [psycopg.OperationalError(message)] * 4
    with pytest.raises(RestoreFailed, match="refused the login") as caught:
        pgtools.connect(DSN, "the restore destination", retries=3, error=RestoreFailed)
    assert fake_connect["calls"] == 1 and fake_connect["sleeps"] == []
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_connect_does_not_retry_or_echo_a_malformed_dsn(fake_connect):
    with pytest.raises(BackupFailed, match="not a valid connection string") as caught:
        pgtools.connect("host=db1 password='s3cr3t x' port", "target app", retries=3)
    assert fake_connect["calls"] == 0 and "s3cr3t" not in str(caught.value)


def test_connect_message_never_holds_the_password(fake_connect):
    fake_connect["outcomes"] = [psycopg.OperationalError("timeout expired")] * 2
    with pytest.raises(DatabaseUnreachable) as caught:
        pgtools.connect("postgresql://dbops:hunter2@db1.invalid/app", "target app", retries=1, backoff=0)
    assert "hunter2" not in str(caught.value) and "timeout expired" in str(caught.value)


# --- dropping a scratch database through the helper ------------------------------------------

class FakeAdmin:
    """What scratch.connect returns: records the statements, fails them as scripted."""

    def __init__(self, log: list, failure: BaseException | None = None):
        self.log, self.failure = log, failure

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def execute(self, query):
        self.log.append(query.as_string(None))
        if self.failure is not None:
            raise self.failure


@pytest.fixture
def fake_admin(monkeypatch):
    from dbops_pipelines.verification import scratch

    state = {"outcomes": [], "statements": [], "sleeps": []}

    def fake(dsn, label, retries=3, **kwargs):
        assert retries == 0, "_drop retries the whole connect + DROP itself"
        outcome = state["outcomes"].pop(0)   # an exception: connect fails; ("drop", exc): the DROP does
        if isinstance(outcome, BaseException):
            raise outcome
        return FakeAdmin(state["statements"], outcome[1] if outcome else None)

    monkeypatch.setattr(scratch, "connect", fake)
    monkeypatch.setattr("time.sleep", state["sleeps"].append)
    return state, scratch.ScratchDatabase("postgresql://dbops@db1.invalid/postgres", "dbops_verify_app_x")


def test_drop_retries_a_server_that_is_restarting(fake_admin):
    state, db = fake_admin
    state["outcomes"] = [DatabaseUnreachable("server restarting"),
                         ("drop", psycopg.OperationalError("server closed the connection unexpectedly")), None]
    db._drop(retries=2)
    assert state["sleeps"] == [1.0, 2.0]
    assert state["statements"] == ['DROP DATABASE IF EXISTS "dbops_verify_app_x" WITH (FORCE)'] * 2


def test_drop_does_not_retry_a_refused_login(fake_admin):
    state, db = fake_admin
    state["outcomes"] = [BackupFailed("verification server refused the login"), None]
    with pytest.raises(BackupFailed, match="refused the login"):
        db._drop(retries=2)
    assert state["sleeps"] == [] and state["statements"] == []


def test_drop_reports_the_last_failure_when_the_server_stays_down(fake_admin):
    state, db = fake_admin
    state["outcomes"] = [DatabaseUnreachable("down 1"), DatabaseUnreachable("down 2")]
    with pytest.raises(DatabaseUnreachable, match="down 2"):
        db._drop(retries=1)
    assert state["sleeps"] == [1.0]


def test_drop_does_not_retry_a_missing_privilege(fake_admin):
    state, db = fake_admin
    state["outcomes"] = [("drop", psycopg.errors.InsufficientPrivilege("must be owner of database")), None]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        db._drop(retries=2)
    assert state["sleeps"] == [] and len(state["statements"]) == 1
