"""The context of a Python function service: what openYuanrong's `handler(event, context)` and
`initializer(context)` receive, under openYuanrong's method names (`getUserData`,
`getRequestID`, `getFunctionName`, `getRemainingTimeInMilliSeconds`, `getLogger`, ...).

The agent describes the function in the process's environment (`YR_FUNCTION`, `YR_USER_DATA`,
`YR_FUNCTION_TIMEOUT_MS`, ...); `Context.from_env` reads it once. Each call gets its own context
(`Context.for_call`) carrying the call's request ID and start time, so that concurrent calls of one
instance never see each other's.

Invariants: a context never raises for missing or malformed agent settings (a value it cannot
read is reported empty or zero: the user's handler is not the place to fail for the platform);
`getUserData` reads the function's registered `environment` only, never the process environment
at large.
"""

import datetime
import json
import os
import sys
import time
import uuid
from typing import Any, Dict, Mapping, Optional


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env.get(key, "0"))
    except ValueError:
        return 0


def _user_data(env: Mapping[str, str]) -> Dict[str, str]:
    try:
        data = json.loads(env.get("YR_USER_DATA", "") or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class Logger:
    """openYuanrong's context logger: one line per message on the instance's stdout log,
    `<date> <time> <request-id> [<LEVEL>] <message>`."""

    def __init__(self, request_id: str):
        self._request_id = request_id

    def _log(self, level: str, message: Any) -> None:
        now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        # One write per line, so that lines of concurrent calls do not interleave.
        sys.stdout.write(f"{now} {self._request_id} [{level}] {message}\n")
        sys.stdout.flush()

    def debug(self, message: Any) -> None:
        self._log("DEBUG", message)

    def info(self, message: Any) -> None:
        self._log("INFO", message)

    def warning(self, message: Any) -> None:
        self._log("WARN", message)

    warn = warning

    def error(self, message: Any) -> None:
        self._log("ERROR", message)


class Context:
    """What a handler learns about its function and its call."""

    def __init__(
        self,
        function_name: str = "",
        version: str = "",
        user_data: Optional[Dict[str, str]] = None,
        timeout_ms: int = 0,
        cpu_millis: int = 0,
        memory_mib: int = 0,
        instance_id: str = "",
        request_id: str = "",
        started: Optional[float] = None,
    ):
        self._function_name = function_name
        self._version = version
        self._user_data = dict(user_data or {})
        self._timeout_ms = timeout_ms
        self._cpu_millis = cpu_millis
        self._memory_mib = memory_mib
        self._instance_id = instance_id
        self._request_id = request_id
        self._started = time.monotonic() if started is None else started

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "Context":
        """The function's context as the agent describes it (no call yet)."""
        return cls(
            function_name=env.get("YR_FUNCTION", ""),
            version=env.get("YR_FUNCTION_VERSION", ""),
            user_data=_user_data(env),
            timeout_ms=_int(env, "YR_FUNCTION_TIMEOUT_MS"),
            cpu_millis=_int(env, "YR_CPU_MILLIS"),
            memory_mib=_int(env, "YR_MEMORY_MIB"),
            instance_id=env.get("YR_INSTANCE_ID", ""),
        )

    def for_call(self, request_id: Optional[str] = None) -> "Context":
        """A copy for one call, starting now, with its own request ID."""
        return Context(
            self._function_name, self._version, self._user_data, self._timeout_ms,
            self._cpu_millis, self._memory_mib, self._instance_id,
            request_id if request_id is not None else uuid.uuid4().hex,
        )

    # openYuanrong's names.

    def getUserData(self, key: str, default: Any = None) -> Any:
        """The value of `key` in the function's registered `environment`, else `default`."""
        return self._user_data.get(key, default)

    def getRequestID(self) -> str:
        return self._request_id

    def getFunctionName(self) -> str:
        return self._function_name

    def getVersion(self) -> str:
        return self._version

    def getInstanceID(self) -> str:
        return self._instance_id

    def getTenantID(self) -> str:
        return "default"

    def getMemorySize(self) -> int:
        """Memory per instance, in MB."""
        return self._memory_mib

    def getCPUNumber(self) -> int:
        """CPU per instance, in millicores."""
        return self._cpu_millis

    def getRunningTimeInSeconds(self) -> int:
        """The function's timeout per call, in seconds."""
        return self._timeout_ms // 1000

    def getRemainingTimeInMilliSeconds(self) -> int:
        """What is left of this call's timeout (0 once it has run out)."""
        elapsed_ms = int((time.monotonic() - self._started) * 1000)
        return max(0, self._timeout_ms - elapsed_ms)

    def getLogger(self) -> Logger:
        return Logger(self._request_id)

    def __repr__(self) -> str:
        return f"Context(function={self._function_name!r}, request={self._request_id!r})"
