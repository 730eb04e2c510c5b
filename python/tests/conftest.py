"""Fixtures shared by the Python package's tests: one real one-node cluster, started with the `yr`
binary ($YR_BIN, else `yr` on PATH) for the whole test session and stopped after it.

The node's Python function processes run on the interpreter running these tests (`--python`), the
one the package is installed into, so that they import the same `yr`.
"""

import json
import os
import subprocess
import sys
import tempfile

import pytest

YR = os.environ.get("YR_BIN", "yr")


@pytest.fixture(scope="session")
def session():
    """The session folder of a running master node (with its REST services)."""
    with tempfile.TemporaryDirectory(prefix="yr-py-") as d:
        folder = os.path.join(d, "node")
        subprocess.run(
            [YR, "start", "--master", "--ports", "auto", "--shm-size", "64MiB",
             "--python", sys.executable, "--session-dir", folder],
            check=True, timeout=120,
        )
        try:
            yield folder
        finally:
            subprocess.run([YR, "stop", "--force", "--session-dir", folder], timeout=120)


@pytest.fixture(scope="session")
def session_info(session):
    """The node's session.json: REST URLs (`meta_url`, `frontend_url`), `token_file`, ..."""
    with open(os.path.join(session, "session.json"), encoding="utf-8") as f:
        return json.load(f)
