"""openYuanrong's driver API on yr: connecting, objects, stateless functions, stateful instances
and the data worker's KV.

How a Python function runs: the decorated function (or class) is pickled by value (cloudpickle)
and deployed once per set of pool options as a yr function of runtime `python3.x` whose
environment carries the code (inline when small, else as an object the driver owns) and the
driver's interpreter. The agent starts `python -m yr.worker` processes for it; a call's
arguments travel inline when small and as objects otherwise (a reference passed as an argument
is resolved on the node where the call runs, pulled there when it lives elsewhere).

Invariants: every reference a call returns is owned by this driver and freed when the last
Python reference to it goes; calls on one instance proxy run one at a time, in order; a remote
exception is raised by `yr.get` as a YRInvokeError deriving from the exception's own class.
"""

import atexit
import base64
import hashlib
import os
import re
import sys
import threading
import time
import uuid

from . import _yr
from . import serialization as ser
from .config import Config, InvokeOptions
from .exception import (
    FunctionNotFoundError,
    GetTimeoutError,
    YRRuntimeError,
    YRTypeError,
    YRValueError,
)

ObjectRef = _yr.ObjectRef

#: Code up to this size travels in the function's environment; larger code as an object.
_INLINE_CODE = 96 << 10
_lock = threading.Lock()
_state = {"config": None, "deployed": {}, "code_refs": [], "working_dir": "", "job": ""}


# ----------------------------------------------------------------------------- connecting

def init(conf=None):
    """Connects this process to the cluster of this host (the newest session `yr start` wrote),
    or the one `conf` names. Returns a ClientInfo-like object with `job_id`."""
    conf = conf or Config()
    session = conf.session or os.environ.get("YR_SESSION") or None
    master = conf.server_address or None
    if master and "://" in master:
        master = master.split("://", 1)[1]
    _yr.init(session, None if session else master)
    with _lock:
        _state["config"] = conf
        _state["deployed"] = {}
        _state["code_refs"] = []
        wd = conf.working_dir or os.environ.get("YR_WORKING_DIR", "")
        _state["working_dir"] = os.path.abspath(wd) if wd else ""
        _state["job"] = conf.job_id or uuid.uuid4().hex[:8]
    atexit.register(finalize)
    return _ClientInfo(_state["job"])


class _ClientInfo:
    def __init__(self, job_id):
        self.job_id = job_id

    def __repr__(self):
        return f"ClientInfo(job_id={self.job_id!r})"


def finalize():
    """Disconnects. The pools of this driver's stateless functions stop (as a job's workers do);
    its stateful instances live on until terminated; the objects it owns are freed once their
    last reference is gone."""
    atexit.unregister(finalize)
    with _lock:
        deployed, _state["deployed"] = _state["deployed"], {}
        _state["code_refs"] = []
    if _yr.is_initialized():
        for (_, kind, _), name in deployed.items():
            if kind == "function":
                try:
                    _yr.undeploy(name)
                except Exception:  # noqa: BLE001 - the cluster may be gone already
                    pass
    _yr.finalize()


def is_initialized():
    return _yr.is_initialized()


# ----------------------------------------------------------------------------- objects

def put(value):
    """Stores `value` in this node's data worker; returns its reference. bytes-like values are
    stored as they are (Rust programs read them unchanged); anything else is pickled with its
    large buffers (numpy arrays...) written straight into shared memory."""
    if isinstance(value, ObjectRef):
        raise YRTypeError("yr.put of an ObjectRef: the value already has a reference")
    if value is None:
        raise YRValueError("yr.put(None): there is nothing to store")
    if isinstance(value, bytes):
        return _yr.put_bytes(value)
    if isinstance(value, (bytearray, memoryview)):
        part, keep = ser.part_of(value)
        r = _yr.put_parts(b"", [(0, part)])
        del keep
        return r
    enc = ser.encode(value, allow_inline=False)
    return _yr.put_parts(enc.meta, enc.parts)


def _timeout(timeout):
    if timeout is None or timeout == -1:
        return None
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds or -1, got {timeout!r}")
    return float(timeout)


def get(obj_refs, timeout=300, allow_partial=False):
    """The value of a reference, or the values of a list of references (in order), waiting up
    to `timeout` seconds (-1: forever). Raises what the call raised, or GetTimeoutError."""
    t = _timeout(timeout)
    if isinstance(obj_refs, ObjectRef):
        inline, window = _yr.get([obj_refs], t)[0]
        return ser.decode(inline, window)
    if isinstance(obj_refs, _Item):
        return get(obj_refs.parent, timeout)[obj_refs.i]
    if not isinstance(obj_refs, list):
        raise TypeError(f"yr.get takes an ObjectRef or a list of them, not {type(obj_refs).__name__}")
    if any(isinstance(r, _Item) for r in obj_refs):
        return [get(r, timeout) for r in obj_refs]
    if not allow_partial:
        return [ser.decode(i, w) for i, w in _yr.get(obj_refs, t)]
    out = []
    deadline = None if t is None else time.monotonic() + t
    for r in obj_refs:
        left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
        try:
            inline, window = _yr.get([r], left)[0]
            out.append(ser.decode(inline, window))
        except Exception:  # noqa: BLE001 - allow_partial fills failures with None
            out.append(None)
    return out


def wait(obj_refs, wait_num=None, timeout=None):
    """Waits until `wait_num` (default: all) of `obj_refs` are ready (a failed call counts as
    ready) or `timeout` seconds pass. Returns (ready, not ready), each in input order."""
    single = isinstance(obj_refs, ObjectRef)
    refs = [obj_refs] if single else list(obj_refs)
    if len({id(r) for r in refs}) != len(refs):
        raise ValueError("yr.wait: the same ObjectRef appears twice")
    n = len(refs) if wait_num is None else wait_num
    if not isinstance(n, int) or not 0 <= n <= len(refs):
        raise ValueError(f"wait_num must be an int in [0, {len(refs)}], got {wait_num!r}")
    if n == 0 or timeout == 0:
        return [], refs
    t = None if timeout is None or timeout == -1 else float(timeout)
    done = set(_yr.wait(refs, n, t))
    ready = [r for i, r in enumerate(refs) if i in done]
    rest = [r for i, r in enumerate(refs) if i not in done]
    return ready, rest


# ----------------------------------------------------------------------------- KV

def _key(key):
    if not isinstance(key, str) or not key:
        raise YRValueError(f"a KV key is a non-empty str, got {key!r}")
    return key.encode()


def kv_write(key, value, existence=0, write_mode=0, ttl_second=0, cache_type=0):
    """Writes `value` (bytes-like) under `key` in this node's data worker. With
    existence=ExistenceOpt.NX an existing key is an error."""
    if int(existence) == 1 and _yr.kv_exists(_key(key)):
        raise YRRuntimeError(f"failed to kv_write, key {key!r} already exists (ExistenceOpt.NX)")
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise YRTypeError(f"a KV value is bytes-like, got {type(value).__name__}")
    _yr.kv_set(_key(key), bytes(value))


def kv_set(key, value, set_param=None):
    p = set_param
    kv_write(key, value, getattr(p, "existence", 0), getattr(p, "write_mode", 0), getattr(p, "ttl_second", 0))


def kv_write_with_param(key, value, set_param):
    kv_set(key, value, set_param)


def _kv_read_one(key, timeout):
    t = 0.0 if timeout in (None, 0) else (float(2 ** 31) if timeout == -1 else float(timeout))
    try:
        return memoryview(ser._view(_yr.kv_get(_key(key), t)))
    except GetTimeoutError as e:
        raise YRRuntimeError(f"failed to kv_read, key {key!r} not found within {timeout} s: {e}") from None
    except Exception as e:  # the data worker's own refusal (no such key)
        if isinstance(e, (TypeError, ValueError)):
            raise
        raise YRRuntimeError(f"failed to kv_read, key {key!r}: {e}") from None


def kv_read(key, timeout=300):
    """The value under `key` (a memoryview), or a list of them for a list of keys; waits up to
    `timeout` seconds for a missing key to be written, then raises a RuntimeError."""
    if isinstance(key, list):
        return [_kv_read_one(k, timeout) for k in key]
    return _kv_read_one(key, timeout)


def kv_get(key, timeout=300):
    if timeout is not None and timeout <= 0 and timeout != -1:
        raise ValueError(f"timeout must be positive or -1, got {timeout!r}")
    return kv_read(key, timeout)


def kv_del(key):
    """Deletes `key` (or each key of a list); a missing key is not an error."""
    for k in key if isinstance(key, list) else [key]:
        if _yr.kv_exists(_key(k)):
            _yr.kv_del(_key(k))


# ----------------------------------------------------------------------------- deploying code

def _code_dir():
    wd = _state["working_dir"]
    if wd:
        return wd
    main = sys.modules.get("__main__")
    f = getattr(main, "__file__", None)
    return os.path.dirname(os.path.abspath(f)) if f else os.getcwd()


def _opts_key(opts):
    if opts is None:
        return ()
    return (
        int(opts.cpu), int(opts.memory), opts.concurrency, tuple(sorted(opts.custom_resources.items())),
        int(opts.min_instances), int(opts.max_instances), tuple(map(tuple, (
            (k, key, tuple(v)) for k, key, v in opts.placement_rules()))),
        tuple(sorted((opts.env_vars or {}).items())), int(opts.recover_retry_times),
        (opts.runtime_env or {}).get("working_dir", ""),
    )


def _deploy(code, kind, opts):
    """The deployed function name of `code` (a _Code) under `opts`, deploying it first."""
    key = (id(code), kind, _opts_key(opts))
    name = _state["deployed"].get(key)
    if name is not None:
        return name
    blob = code.blob()
    h = hashlib.sha256(blob)
    h.update(repr(key[1:]).encode())
    h.update(sys.executable.encode())
    if kind == "function":
        # A stateless function's pool is this driver's (stopped at finalize); a class is
        # shared, so that a named instance is found again by another driver.
        h.update(_state["job"].encode())
    label = re.sub(r"[^A-Za-z0-9_-]", "-", code.name)[:40]
    name = f"py-{label}-{h.hexdigest()[:16]}"
    env = {
        "YR_PYTHON": sys.executable,
        "YR_PY_KIND": kind,
        # What the code imports by name (a module beside the script, a test module) is found
        # where the driver found it: its sys.path travels with the function.
        "YR_PY_PATH": os.pathsep.join([_code_dir()] + [p for p in sys.path if p and os.path.isdir(p)]),
    }
    if len(blob) <= _INLINE_CODE:
        env["YR_PY_FUNCTION"] = base64.b64encode(blob).decode()
    else:
        ref = _yr.put_bytes(blob)
        _state["code_refs"].append(ref)
        env["YR_PY_FUNCTION_REF"] = ref.id
    o = opts or InvokeOptions()
    env.update({str(k): str(v) for k, v in (o.env_vars or {}).items()})
    wd = (o.runtime_env or {}).get("working_dir") or _state["working_dir"]
    spec = {
        "name": name,
        "runtime": f"python{sys.version_info[0]}.{sys.version_info[1]}",
        # The working dir (if any) is the code the agent copies into each instance's folder,
        # which is the process's cwd and first on its sys.path.
        "code_path": os.path.abspath(wd) if wd else "",
        "handler": "yr.task",
        "kind": "yrlib",
        "description": f"Python {kind} {code.name}",
        "cpu": int(o.cpu),
        "memory": int(o.memory),
        "custom": {str(k): float(v) for k, v in (o.custom_resources or {}).items()},
        "min_instances": int(o.min_instances),
        "max_instances": int(o.max_instances) if o.max_instances > 0 else 16,
        "concurrency": int(o.concurrency or 1),
        "timeout_ms": 0,
        "max_retries": int(o.recover_retry_times) if kind == "class" else 3,
        "env": env,
        "affinity": o.placement_rules(),
    }
    _yr.deploy(spec)
    _state["deployed"][key] = name
    return name


class _Code:
    """A function or class shipped by value, pickled once."""

    def __init__(self, obj):
        self.obj = obj
        self.name = getattr(obj, "__qualname__", getattr(obj, "__name__", "function"))
        self._blob = None

    def blob(self):
        if self._blob is None:
            import cloudpickle
            self._blob = cloudpickle.dumps(self.obj, protocol=5)
        return self._blob


def _encode_args(args, kwargs):
    """A call's arguments as the native submit takes them: a header naming the keyword
    arguments, then each value (inline bytes, or a reference: a value too large to travel
    inline is put first, owned by this driver until the call ends)."""
    out = [("\0".join(kwargs) if kwargs else "").encode()]
    for v in (*args, *kwargs.values()):
        if isinstance(v, ObjectRef):
            out.append(v)
            continue
        enc = ser.encode(v)
        if enc.inline is not None:
            out.append(enc.inline)
        else:
            out.append(_yr.put_parts(enc.meta, enc.parts))
    return out


# ----------------------------------------------------------------------------- functions

class FunctionProxy:
    """A function that runs on the cluster: `f.invoke(*args, **kwargs)` returns an ObjectRef at
    once (a list of `return_nums` refs when that is above 1)."""

    def __init__(self, func, invoke_options=None, return_nums=None):
        self._code = _Code(func)
        self._func = func
        self._opts = invoke_options
        self._return_nums = 1 if return_nums is None else int(return_nums)
        if not 0 <= self._return_nums <= 100:
            raise ValueError(f"return_nums must be in [0, 100], got {return_nums}")
        self.__name__ = getattr(func, "__name__", "function")
        self.__doc__ = getattr(func, "__doc__", None)

    def __call__(self, *args, **kwargs):
        raise RuntimeError("invoke function cannot be called directly: use .invoke(...)")

    def options(self, invoke_options):
        """Sets the options of later calls (and returns this proxy)."""
        invoke_options.check_options_valid()
        invoke_options.check_options_range()
        self._opts = invoke_options
        return self

    def get_original_func(self):
        return self._func

    def invoke(self, *args, **kwargs):
        name = _deploy(self._code, "function", self._opts)
        o = self._opts
        timeout = getattr(o, "timeout", None) if o is not None else None
        retries = int(o.retry_times) if o is not None and o.retry_times else None
        ref = _yr.submit(name, _encode_args(args, kwargs), timeout, retries)
        if self._return_nums == 1:
            return ref
        return _split(ref, self._return_nums)


def cancel(obj_refs, allow_force=True, allow_recursive=False):
    """Cancels stateless calls by their results (one ObjectRef or a list): `yr.get` of each
    raises CancelError at once, a call still waiting for its instance never runs, and one
    already running finishes where it runs with its result discarded. A reference whose call
    has ended, a put's, or a stateful instance's call is left as it is (as openYuanrong does).
    `allow_force` and `allow_recursive` are accepted for compatibility."""
    refs = obj_refs if isinstance(obj_refs, list) else [obj_refs]
    refs = [r.parent if isinstance(r, _Item) else r for r in refs]
    for r in refs:
        if not isinstance(r, ObjectRef):
            raise TypeError(
                f"obj_refs type error, actual: {type(r)}, element expect: <class 'ObjectRef'>"
            )
    for r in refs:
        r.cancel()


def _split(ref, n):
    """`n` references to the items of the tuple a call returns (0: None)."""
    if n == 0:
        return None
    return [_Item(ref, i) for i in range(n)]


class _Item:
    """Item `i` of a multi-value result (read through yr.get of its parent)."""

    def __init__(self, parent, i):
        self.parent, self.i = parent, i


def invoke(func=None, *, invoke_options=None, return_nums=None, initializer=None):
    """`@yr.invoke` (or `@yr.invoke(invoke_options=..., return_nums=...)`) on a function."""
    if func is None:
        return lambda f: FunctionProxy(f, invoke_options, return_nums)
    return FunctionProxy(func, invoke_options, return_nums)


# ----------------------------------------------------------------------------- instances

# A named instance's cluster-wide name: `name`, or `namespace::name` in a namespace. The
# separator is not '-' (as openYuanrong's is) because names themselves often hold one
# ("counter-1"), which would make `list_named_instances` misread them.
_NS_SEP = "::"
# An instance created without a name gets one of these (never listed as named).
_UNNAMED = re.compile(r"py-[0-9a-f]{20}")


def _full_name(name, namespace):
    return f"{namespace}{_NS_SEP}{name}" if namespace else name


def _instance_name(opts):
    name = getattr(opts, "name", "") if opts is not None else ""
    ns = getattr(opts, "namespace", "") if opts is not None else ""
    if not name:
        return f"py-{uuid.uuid4().hex[:20]}"
    return _full_name(name, ns)


class MethodProxy:
    """`instance.method.invoke(*args)` returns an ObjectRef at once."""

    def __init__(self, instance, method, return_nums=1):
        self._instance = instance
        self._method = method
        self._return_nums = return_nums
        self._timeout = None

    def options(self, invoke_options):
        self._timeout = getattr(invoke_options, "timeout", None)
        return self

    def invoke(self, *args, **kwargs):
        ref = self._instance._handle.call(self._method, _encode_args(args, kwargs), self._timeout)
        if self._return_nums == 1:
            return ref
        return _split(ref, self._return_nums)


class InstanceProxy:
    """A stateful instance: its methods are attributes with `.invoke`; `terminate()` stops it."""

    def __init__(self, handle, cls=None):
        self._handle = handle
        self._cls = cls
        self._init_ref = None

    @property
    def instance_id(self):
        return self._handle.name

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        cls = self.__dict__.get("_cls")
        if cls is not None and not hasattr(cls, name):
            raise AttributeError(f"'{cls.__name__}' object has no attribute '{name}'")
        n = getattr(getattr(cls, name, None), "__yr_return_nums__", 1)
        return MethodProxy(self, name, n)

    def terminate(self, is_sync=False):
        """Stops the instance (later calls through this proxy fail)."""
        self._handle.kill()

    def is_activate(self):
        return _yr.find_instance(self._handle.name) is not None


class InstanceCreator:
    """`Cls.invoke(*args)` creates an instance (args go to `__init__`) and returns its proxy;
    with options naming it, an existing instance of that name is returned instead."""

    def __init__(self, cls, invoke_options=None):
        self._cls = cls
        self._code = _Code(cls)
        self._opts = invoke_options
        self.__name__ = cls.__name__

    def options(self, invoke_options=None, **kwargs):
        opts = invoke_options or InvokeOptions()
        for k, v in kwargs.items():
            setattr(opts, "namespace" if k == "namespace" else k, v)
        return _BoundCreator(self, opts)

    def invoke(self, *args, **kwargs):
        return self._create(self._opts, args, kwargs)

    def get_instance(self, name, timeout=30):
        return get_instance(name, "", timeout)

    def _create(self, opts, args, kwargs):
        name = _deploy(self._code, "class", opts)
        handle = _yr.create_instance(name, _instance_name(opts))
        proxy = InstanceProxy(handle, self._cls)
        # The constructor runs as the instance's first call (a named instance found again
        # ignores it): its failure surfaces on the gets of later calls.
        proxy._init_ref = handle.call("__init__", _encode_args(args, kwargs))
        return proxy


class _BoundCreator:
    def __init__(self, creator, opts):
        self._creator, self._opts = creator, opts

    def invoke(self, *args, **kwargs):
        return self._creator._create(self._opts, args, kwargs)


def instance(cls=None, *, invoke_options=None):
    """`@yr.instance` (or `@yr.instance(invoke_options=...)`) on a class."""
    if cls is None:
        return lambda c: instance(c, invoke_options=invoke_options)
    if not isinstance(cls, type):
        raise RuntimeError("@yr.instance decorator must be applied to a class")
    return InstanceCreator(cls, invoke_options)


def method(func=None, *, return_nums=1, concurrency_group=None):
    """`@yr.method(return_nums=n)` on a method of an `@yr.instance` class."""
    def mark(f):
        f.__yr_return_nums__ = return_nums
        return f
    return mark if func is None else mark(func)


def get_instance(name, namespace="", timeout=60):
    """The live named instance `name` (in `namespace`), waiting up to `timeout` seconds for it
    to exist. Raises FunctionNotFoundError (a RuntimeError) when there is none."""
    if not isinstance(name, str) or not isinstance(namespace, str):
        raise TypeError("name and namespace are str")
    if timeout is not None and timeout < 0:
        raise TypeError("timeout must not be negative")
    full = _full_name(name, namespace)
    deadline = time.monotonic() + (timeout or 0)
    while True:
        h = _yr.find_instance(full)
        if h is not None:
            return InstanceProxy(h)
        if time.monotonic() >= deadline:
            raise FunctionNotFoundError(f"failed to get instance: {full} by name: no such instance")
        time.sleep(0.1)


def list_named_instances(all_namespaces=False):
    """The live named stateful instances of the cluster (created by any driver): their names in
    the default namespace, or with `all_namespaces` every one as {"name": ..., "namespace": ...}.
    Instances created without a name are not listed."""
    out = []
    for full in _yr.instance_names():
        if _UNNAMED.fullmatch(full):
            continue
        ns, sep, name = full.partition(_NS_SEP)
        if not sep:
            ns, name = "", full
        if all_namespaces:
            out.append({"name": name, "namespace": ns})
        elif not ns:
            out.append(name)
    return out
