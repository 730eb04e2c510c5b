"""The task side of a Python function process: runs a Python driver's function, or holds one
instance of its class, for the calls `yr.worker` hands over (see `yr.apis` for the driver side).

The code comes in the environment the driver deployed the function with: `YR_PY_FUNCTION`
(base64 of the cloudpickled function or class) or `YR_PY_FUNCTION_REF` (an object holding it);
`YR_PY_KIND` says which ("function" or "class").

Invariants: arguments that arrived as objects are read in place (numpy arrays over the pinned
shared memory; the pin lasts while the arrays do); a raised exception becomes the call's value,
flagged as an error, so the driver's `yr.get` raises it with its remote traceback; a result too
large for the reply is written straight into a shared-memory object here.
"""

import base64
import os
import sys
import threading

from . import _yr
from . import serialization as ser
from .exception import YRInvokeError, invoke_error

_load_lock = threading.Lock()
_code = {"obj": None}
_instance = {"obj": None, "error": None}


def _load():
    obj = _code["obj"]
    if obj is not None:
        return obj
    with _load_lock:
        if _code["obj"] is None:
            import cloudpickle  # noqa: F401 - registers what unpickling the code needs
            import pickle
            blob = os.environ.get("YR_PY_FUNCTION")
            if blob is not None:
                data = base64.b64decode(blob)
            else:
                ref = os.environ.get("YR_PY_FUNCTION_REF")
                if not ref:
                    raise RuntimeError("this function process was deployed without its code "
                                       "(neither YR_PY_FUNCTION nor YR_PY_FUNCTION_REF is set)")
                data = _yr.fetch_object(ref).tobytes()
            _code["obj"] = pickle.loads(data)
        return _code["obj"]


def setup():
    """Prepares the process: after its cwd (the instance's copy of the driver's working dir,
    when it has one), the driver's script folder, then the rest of the driver's sys.path after
    this interpreter's own."""
    paths = [p for p in os.environ.get("YR_PY_PATH", "").split(os.pathsep) if p]
    if paths and paths[0] not in sys.path:
        sys.path.insert(1, paths[0])
    for p in paths[1:]:
        if p not in sys.path and os.path.isdir(p):
            sys.path.append(p)


def _args(args):
    """Decodes a call's arguments: (positional, keyword)."""
    names = args[0].tobytes().decode() if len(args[0]) else ""
    values = []
    for w in args[1:]:
        if w.shared:
            values.append(ser.decode_meta(w.meta(), w))
        else:
            values.append(ser.decode_inline(w.tobytes()))
    if not names:
        return values, {}
    keys = names.split("\0")
    split = len(values) - len(keys)
    return values[:split], dict(zip(keys, values[split:]))


def _result(value, flags=0):
    enc = ser.encode(value, flags)
    if enc.inline is not None:
        return enc.inline
    return (enc.meta, enc.parts, enc.keep)


def _failed(exc):
    err = invoke_error(exc)
    try:
        return _result(err, ser.FLAG_ERROR)
    except Exception:  # noqa: BLE001 - an exception that does not pickle
        cause = RuntimeError(f"{type(exc).__name__}: {exc!r}")
        return _result(YRInvokeError(cause, err.traceback_str), ser.FLAG_ERROR)


def handle_call(method, args):
    """Runs one call: `method` is empty for a function, a method name for an instance."""
    try:
        obj = _load()
        try:
            pos, kw = _args(args)
        except YRInvokeError as e:
            # An argument is a failed call's value: this call fails the same way (the caller
            # sees the first error, not a wrapper of it).
            return _result(YRInvokeError(e.cause, e.traceback_str), ser.FLAG_ERROR)
        if os.environ.get("YR_PY_KIND") != "class":
            return _result(obj(*pos, **kw))
        if method == "__init__":
            if _instance["obj"] is None and _instance["error"] is None:
                try:
                    _instance["obj"] = obj(*pos, **kw)
                except Exception as e:  # noqa: BLE001 - reported on this and later calls
                    _instance["error"] = e
                    raise
            return _result(None)
        if _instance["error"] is not None:
            raise _instance["error"]
        if _instance["obj"] is None:
            raise RuntimeError(
                f"the {getattr(obj, '__name__', 'class')} instance was not constructed: its "
                "constructor call (__init__) failed before it reached the instance; the error "
                "of that call says why")
        return _result(getattr(_instance["obj"], method)(*pos, **kw))
    except Exception as e:  # noqa: BLE001 - every exception is the call's value
        return _failed(e)
