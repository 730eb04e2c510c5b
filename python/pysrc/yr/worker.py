"""A Python function process: what the agent runs, as `python -m yr.worker`, for an instance of a
function whose runtime is `python3` / `python3.N`.

Two modes, chosen by the environment the agent gives:
- task mode (any of `TASK_ENV` set: a Python driver deployed the function with its code in the
  environment): a driver's pickled functions and classes (`yr._task`);
- service mode (otherwise): an openYuanrong function service. The code folder is the working
  directory; `YR_HANDLER` names `module.function` there. The event is the JSON-decoded request
  body (an empty body is `{}`, a body that is not JSON is passed as a str); the return value is
  the response body (bytes as they are, anything else JSON-encoded as UTF-8).
  `YR_INITIALIZER` runs once with the context before the first call, within
  `YR_INITIALIZER_TIMEOUT_MS`; `YR_PRE_STOP` runs once on the way out, within
  `YR_PRE_STOP_TIMEOUT_MS`.

Invariants:
- No call is served before the initializer has returned; an initializer (or handler import) that
  fails or runs out of time ends the process non-zero with the traceback on stderr, which the
  agent reports as the instance's failure.
- The native serve loop (`yr._yr.serve`) runs on a thread of its own; the main thread only waits
  for it to end or for SIGTERM/SIGINT, then runs pre_stop once and leaves with `os._exit` (the
  serve thread may be blocked in native code, which interpreter shutdown must not wait for).
- A handler's exception fails that call only, as the function's own error whose message is the
  full traceback; the process keeps serving.
"""

import importlib
import inspect
import json
import os
import signal
import sys
import threading
import traceback
from typing import Any, Callable, Optional, Tuple

from . import _yr
from .functionservice import Context

# The instance's secret for the proxy: importing `_yr` took it out of the C environment; drop
# Python's copies too, so that the function's code and its children do not see it.
os.environ.pop("YR_INSTANCE_SECRET", None)
try:
    import posix

    posix.environ.pop(b"YR_INSTANCE_SECRET", None)
except ImportError:  # not a POSIX system: no such copy
    pass

# Why the main thread woke up: one byte on a pipe, written by the signal handler or by the serve
# thread. A pipe rather than an Event: a signal handler must not take a lock the interrupted main
# thread may hold.
_SIGNALLED = b"s"
_SERVE_ENDED = b"e"

#: The environment keys a Python driver's functions carry (see `yr.apis`); any one of them makes
#: the process a task process. The control plane's registration check mirrors this list.
TASK_ENV = ("YR_PY_KIND", "YR_PY_FUNCTION", "YR_PY_FUNCTION_REF")


def _fail(message: str) -> None:
    """Ends the process: `message` (usually a traceback) on stderr, for the agent to report."""
    sys.stderr.write(message if message.endswith("\n") else message + "\n")
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(1)


def _ms(name: str) -> int:
    try:
        return int(os.environ.get(name, "0") or "0")
    except ValueError:
        return 0


def resolve(name: str, what: str) -> Callable:
    """The function `module.function` (the module may be dotted) names, imported from the code
    folder; raises ValueError with a message naming `what` when it is not one."""
    module_name, _, attr = name.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"{what} {name!r} must be module.function")
    module = importlib.import_module(module_name)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(
            f"{what} {name!r}: module {module_name!r} ({getattr(module, '__file__', '?')}) "
            f"has no function {attr!r}"
        )
    return fn


def _takes_argument(fn: Callable) -> bool:
    """Whether `fn` can be called with one positional argument. openYuanrong documents
    `initializer(context)` and `pre_stop()`; either is accepted with or without the context."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    try:
        sig.bind(None)
        return True
    except TypeError:
        return False


def run_hook(fn: Callable, context: Context, timeout_ms: int) -> Tuple[bool, Optional[str]]:
    """Runs a lifecycle hook with `context` (when it takes one) on a thread of its own, waiting
    up to `timeout_ms` (0: no limit): (finished, traceback of its exception or None). A hook that
    runs out of time is left running; the caller is about to end the process."""
    outcome = {}

    def body():
        try:
            if _takes_argument(fn):
                fn(context)
            else:
                fn()
        except BaseException:  # noqa: B902 - a hook's SystemExit is a failure too
            outcome["error"] = traceback.format_exc()

    t = threading.Thread(target=body, name="yr-hook", daemon=True)
    t.start()
    t.join(timeout_ms / 1000 if timeout_ms > 0 else None)
    if t.is_alive():
        return False, None
    return True, outcome.get("error")


def decode_event(body: bytes) -> Any:
    """The handler's event: `{}` for an empty body, the decoded value of a JSON body, else the
    body as text."""
    if not body.strip():
        return {}
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return body
    try:
        return json.loads(text)
    except ValueError:
        return text


def encode_result(value: Any) -> bytes:
    """The response body: bytes as they are, anything else as JSON (UTF-8, not ASCII-escaped)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def service_call(handler: Callable, context: Context) -> Callable[[str, bytes], bytes]:
    """The `on_call` of a function service: decode, run the handler with a per-call context,
    encode. Any failure becomes a RuntimeError whose text is the full traceback, which the
    caller receives as the function's error."""

    def on_call(method: str, payload: bytes) -> bytes:
        try:
            return encode_result(handler(decode_event(payload), context.for_call()))
        except BaseException:  # noqa: B902 - SystemExit in a handler fails the call, not the process
            raise RuntimeError(traceback.format_exc()) from None

    return on_call


def _serve_until_stopped(on_call: Callable, task: bool) -> Tuple[bool, Optional[str]]:
    """Serves on a background thread until the proxy ends it or a signal asks to stop:
    (signalled, traceback of serve's exception or None)."""
    r, w = os.pipe()

    def wake(why: bytes) -> None:
        try:
            os.write(w, why)
        except OSError:
            pass

    def on_signal(signum, frame):
        wake(_SIGNALLED)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    failure = {}

    def serve():
        try:
            _yr.serve(on_call, task)
        except BaseException:  # noqa: B902
            failure["error"] = traceback.format_exc()
        finally:
            wake(_SERVE_ENDED)

    threading.Thread(target=serve, name="yr-serve", daemon=True).start()
    # os.read is retried after a signal handler returns (PEP 475), and the handler has written
    # its byte by then.
    why = os.read(r, 1)
    return why == _SIGNALLED, failure.get("error")


def _service() -> Tuple[Callable, Callable[[], None]]:
    """Loads a function service and runs its initializer: (on_call, the pre_stop to run at the
    end). Ends the process when the code cannot be loaded or the initializer fails."""
    code_dir = os.getcwd()
    if sys.path[:1] != [code_dir]:
        sys.path.insert(0, code_dir)
    context = Context.from_env()
    handler_name = os.environ.get("YR_HANDLER", "")
    try:
        handler = resolve(handler_name, "handler")
        initializer = os.environ.get("YR_INITIALIZER", "")
        init = resolve(initializer, "initializer") if initializer else None
        pre_stop_name = os.environ.get("YR_PRE_STOP", "")
        pre_stop = resolve(pre_stop_name, "pre_stop") if pre_stop_name else None
    except BaseException:  # noqa: B902 - an import may raise anything
        _fail(f"cannot load the function's code from {code_dir}:\n{traceback.format_exc()}")
        raise  # not reached: _fail exits
    if init is not None:
        limit = _ms("YR_INITIALIZER_TIMEOUT_MS")
        finished, error = run_hook(init, context.for_call(""), limit)
        if not finished:
            _fail(f"initializer {initializer} did not finish within {limit / 1000:g} s")
        if error is not None:
            _fail(f"initializer {initializer} failed:\n{error}")

    def at_stop() -> None:
        if pre_stop is None:
            return
        limit = _ms("YR_PRE_STOP_TIMEOUT_MS")
        finished, error = run_hook(pre_stop, context.for_call(""), limit)
        if not finished:
            sys.stderr.write(f"pre_stop {pre_stop_name} did not finish within {limit / 1000:g} s\n")
        elif error is not None:
            sys.stderr.write(f"pre_stop {pre_stop_name} failed:\n{error}")

    return service_call(handler, context), at_stop


def main() -> None:
    if any(os.environ.get(k) for k in TASK_ENV):
        from . import _task

        _task.setup()
        on_call, task, at_stop = _task.handle_call, True, (lambda: None)
    else:
        on_call, at_stop = _service()
        task = False
    _, failure = _serve_until_stopped(on_call, task)
    # pre_stop runs whichever way serving ended: a signal from the agent, or the proxy closing
    # the instance.
    at_stop()
    if failure is not None:
        sys.stderr.write(f"serving ended with an error:\n{failure}")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if failure is not None else 0)


if __name__ == "__main__":
    main()
