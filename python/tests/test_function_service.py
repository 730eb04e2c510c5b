"""Python function services (runtime python3.x) on a real cluster, through the REST meta service
and frontend as openYuanrong's users call them: the documented demo unchanged, the event and
result codings, the context's user data, a handler's exception, the lifecycle hooks, and the
registrations and interpreters that are refused."""

import datetime
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request

import pytest

from conftest import YR

HERE = os.path.dirname(os.path.abspath(__file__))
DEMO = os.path.join(HERE, "..", "..", "examples", "python", "function_service", "demo.py")


class Rest:
    """The node's meta service and frontend, with its token."""

    def __init__(self, info):
        self.meta = info["meta_url"]
        self.frontend = info["frontend_url"]
        with open(info["token_file"], encoding="utf-8") as f:
            self.token = f.read().strip()

    def call(self, url, body=None, method="POST"):
        """(status, headers, body bytes); an HTTP error status is returned, not raised."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}",
            "Content-Type": "application/json",
        })
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def register(self, body):
        return self.call(f"{self.meta}/serverless/v1/functions", body)

    def registered(self, body):
        status, _, reply = self.register(body)
        assert status == 200, reply
        return json.loads(reply)["function"]["functionVersionUrn"]

    def invoke(self, urn, body):
        return self.call(f"{self.frontend}/serverless/v1/functions/{urn}/invocations", body)


@pytest.fixture(scope="module")
def rest(session_info):
    return Rest(session_info)


def stdout_log(session, instance_id):
    path = os.path.join(session, "node", "work", "instances", instance_id, "stdout.log")
    with open(path, encoding="utf-8") as f:
        return f.read()


def kill(session, instance_id):
    """Stops the instance; returns once its process is gone (pre_stop included)."""
    subprocess.run([YR, "instance", "kill", instance_id, "--session-dir", session],
                   check=True, timeout=300)


def code(tmp_path, name, text):
    """A code folder holding `name`.py."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / f"{name}.py").write_text(text)
    return str(folder)


def test_the_documented_demo_runs_unchanged(rest, session, tmp_path):
    folder = tmp_path / "service"
    folder.mkdir()
    shutil.copy(DEMO, folder / "demo.py")
    # openYuanrong's documented registration body, with only codePath pointing here.
    urn = rest.registered({
        "name": "0@myService@python-demo", "runtime": "python3.9", "handler": "demo.handler",
        "environment": {"show_date": "true"},
        "extendedHandler": {"initializer": "demo.init", "pre_stop": "demo.pre_stop"},
        "extendedTimeout": {"initializer": 30, "pre_stop": 10}, "kind": "faas", "cpu": 600,
        "memory": 512, "timeout": 60, "storageType": "local", "codePath": str(folder),
    })
    assert urn == "sn:cn:yrk:default:function:0@myService@python-demo:latest"
    before = datetime.date.today()
    status, headers, body = rest.invoke(urn, {"name": "yuanrong"})
    after = datetime.date.today()
    assert status == 200, body
    assert body.decode() in {
        json.dumps(f"hello yuanrong,today is {d.strftime('%Y-%m-%d')}") for d in (before, after)
    }
    # As openYuanrong's docs show the response.
    assert headers["X-Inner-Code"] == "0"
    assert headers["Content-Type"] == "application/json"
    instance = headers["X-Instance-Id"]
    log = stdout_log(session, instance)
    assert "function instance initialization completed" in log
    assert "received request,event content: {'name': 'yuanrong'}" in log
    assert log.index("initialization completed") < log.index("received request")
    # A body without a name takes the demo's own error path.
    status, _, body = rest.invoke(urn, {"nom": "x"})
    assert status == 200 and json.loads(body) == "please enter your name,for example:{'name':'yuanrong'}"
    kill(session, instance)
    assert stdout_log(session, instance).rstrip().endswith("function instance is being destroyed")


ECHO = '''
def handler(event, context):
    if isinstance(event, dict) and event.get("raw"):
        return b"\\x00raw bytes"
    return {"event": event, "greeting": context.getUserData("greeting"),
            "absent": context.getUserData("absent"), "function": context.getFunctionName(),
            "remaining": context.getRemainingTimeInMilliSeconds()}
'''


def test_events_results_and_user_data(rest, tmp_path):
    urn = rest.registered({
        "name": "0@pytest@echo", "runtime": "python3", "handler": "echo.handler",
        "environment": {"greeting": "ni hao"}, "timeout": 30,
        "codePath": code(tmp_path, "echo", ECHO),
    })

    def reply(body):
        status, _, out = rest.invoke(urn, body)
        assert status == 200, out
        return out

    r = json.loads(reply({"a": [1, 2], "name": "元戎"}))
    assert r["event"] == {"a": [1, 2], "name": "元戎"}
    assert (r["greeting"], r["absent"], r["function"]) == ("ni hao", None, "0@pytest@echo")
    assert 0 < r["remaining"] <= 30_000
    assert "元戎".encode() in reply({"name": "元戎"}), "results are UTF-8, not ASCII escapes"
    assert json.loads(reply(b""))["event"] == {}
    assert json.loads(reply(b"not json"))["event"] == "not json"
    assert json.loads(reply(b"[3]"))["event"] == [3]
    assert reply({"raw": True}) == b"\x00raw bytes"


FAILING = '''
def handler(event, context):
    if event.get("fail"):
        return helper(event["fail"])
    return "fine"

def helper(n):
    raise ValueError("cannot take %s" % n)
'''


def test_a_handler_exception_is_the_function_error_with_its_traceback(rest, tmp_path):
    urn = rest.registered({
        "name": "0@pytest@failing", "runtime": "python3.11", "handler": "failing.handler",
        "codePath": code(tmp_path, "failing", FAILING),
    })
    status, _, body = rest.invoke(urn, {"fail": 7})
    assert status == 500, body
    err = json.loads(body)
    assert err["code"] == 2002 and err["functionError"] is True
    message = err["message"]
    assert "Traceback (most recent call last)" in message
    assert "in helper" in message and "failing.py" in message
    assert "ValueError: cannot take 7" in message
    # The process keeps serving.
    status, _, body = rest.invoke(urn, {})
    assert (status, json.loads(body)) == (200, "fine")


STOPPER = '''
import os

def handler(event, context):
    print("stopper handled", event)
    return os.getpid()

def init(context):
    print("stopper initialized with", context.getUserData("MARKER"))

def pre_stop():
    with open(os.environ["MARKER"], "w") as f:
        f.write("pre_stop ran")
    print("stopper pre_stop ran")
'''


def test_pre_stop_runs_when_the_instance_stops(rest, session, tmp_path):
    marker = tmp_path / "pre_stop.marker"
    urn = rest.registered({
        "name": "0@pytest@stopper", "runtime": "python3.9", "handler": "stopper.handler",
        "environment": {"MARKER": str(marker)},
        "extendedHandler": {"initializer": "stopper.init", "pre_stop": "stopper.pre_stop"},
        "extendedTimeout": {"pre_stop": 5},
        "codePath": code(tmp_path, "stopper", STOPPER),
    })
    status, headers, body = rest.invoke(urn, {"n": 1})
    assert status == 200, body
    instance = headers["X-Instance-Id"]
    assert not marker.exists()
    kill(session, instance)
    assert marker.read_text() == "pre_stop ran"
    log = stdout_log(session, instance)
    assert f"stopper initialized with {marker}" in log
    assert "stopper handled {'n': 1}" in log
    assert log.rstrip().endswith("stopper pre_stop ran")


BROKEN_INIT = '''
def handler(event, context):
    return "never"

def init(context):
    raise RuntimeError("the database is not there")
'''


def test_a_failing_initializer_fails_the_instance_with_its_traceback(rest, tmp_path):
    urn = rest.registered({
        "name": "0@pytest@brokeninit", "runtime": "python3", "handler": "brokeninit.handler",
        "extendedHandler": {"initializer": "brokeninit.init"},
        "codePath": code(tmp_path, "brokeninit", BROKEN_INIT),
    })
    status, _, body = rest.invoke(urn, {})
    assert status >= 500, body
    text = body.decode()
    assert "initializer brokeninit.init failed" in text, text
    assert "RuntimeError: the database is not there" in text, text


SLOW_INIT = '''
import threading

def handler(event, context):
    return "never"

def init(context):
    threading.Event().wait()  # never returns: only the initializer timeout ends it
'''


def test_an_initializer_that_runs_out_of_time_fails_the_instance(rest, tmp_path):
    urn = rest.registered({
        "name": "0@pytest@slowinit", "runtime": "python3", "handler": "slowinit.handler",
        "extendedHandler": {"initializer": "slowinit.init"},
        "extendedTimeout": {"initializer": 1},
        "codePath": code(tmp_path, "slowinit", SLOW_INIT),
    })
    status, _, body = rest.invoke(urn, {})
    assert status >= 500, body
    assert "initializer slowinit.init did not finish within 1 s" in body.decode(), body


@pytest.mark.parametrize("runtime", ["python2.7", "node", "python3.x"])
def test_an_unknown_runtime_is_refused_at_registration(rest, runtime):
    status, _, body = rest.register({
        "name": f"0@pytest@rt{abs(hash(runtime)) % 10_000}", "runtime": runtime,
        "handler": "demo.handler", "codePath": "/tmp",
    })
    assert status == 400, body
    text = body.decode()
    assert f'"{runtime}" is not supported' in text.replace('\\"', '"'), text
    assert "python3" in text and "posix-custom-runtime" in text


def test_a_bad_handler_name_is_refused_at_registration(rest):
    status, _, body = rest.register({
        "name": "0@pytest@nodot", "runtime": "python3.9", "handler": "handler", "codePath": "/tmp",
    })
    assert status == 400 and b"module.function" in body, body


def test_an_interpreter_without_yr_is_named_with_the_fix(rest, tmp_path):
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None or subprocess.run([python, "-c", "import yr"],
                                        capture_output=True).returncode == 0:
        pytest.skip("no system python3 without yr on this host")
    urn = rest.registered({
        "name": "0@pytest@nopkg", "runtime": "python3", "handler": "echo.handler",
        "environment": {"YR_PYTHON": python}, "codePath": code(tmp_path, "echo", ECHO),
    })
    status, _, body = rest.invoke(urn, {})
    assert status >= 500, body
    text = body.decode().replace('\\"', '"')
    assert f'"{python}"' in text and "import yr._yr" in text, text
    assert "--python" in text and "install" in text, text
