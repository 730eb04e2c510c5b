"""yr: openYuanrong's Python API over yr's Rust runtime.

Driver: `init`, `finalize`, `is_initialized`; objects: `put`, `get`, `wait`; stateless functions
(`@yr.invoke`, `.invoke`, `.options(yr.InvokeOptions(...))`, `cancel`); stateful instances
(`@yr.instance`, `Cls.invoke`, `proxy.method.invoke`, `proxy.terminate`, named instances,
`get_instance`, `list_named_instances`); KV on the data worker (`kv_write`, `kv_read`, `kv_del`,
...). Values are pickled (protocol 5) with their large buffers in shared memory: numpy arrays
come back from `get` without a copy. bytes put here are read unchanged by Rust programs, and the
other way round.
"""

from . import _yr
from ._yr import ObjectRef
from .apis import (
    FunctionProxy,
    InstanceCreator,
    InstanceProxy,
    MethodProxy,
    cancel,
    finalize,
    get,
    get_instance,
    init,
    instance,
    invoke,
    is_initialized,
    kv_del,
    kv_get,
    kv_read,
    kv_set,
    kv_write,
    kv_write_with_param,
    list_named_instances,
    method,
    put,
    wait,
)
from .config import (
    Affinity,
    AffinityKind,
    AffinityScope,
    AffinityType,
    CacheType,
    Config,
    ExistenceOpt,
    InvokeOptions,
    LabelOperator,
    OperatorType,
    SetParam,
    WriteMode,
)
from .functionservice import Context
from .exception import (
    CallTimeoutError,
    CancelError,
    ConnectError,
    FunctionNotFoundError,
    GetTimeoutError,
    InstanceDiedError,
    NotInitializedError,
    ObjectLostError,
    PlatformError,
    TaskError,
    YRError,
    YRequestError,
    YRInvokeError,
    YRRuntimeError,
    YRTimeoutError,
    YRTypeError,
    YRValueError,
)

StatelessFunction = FunctionProxy
StatefulInstanceCreator = InstanceCreator
StatefulInstance = InstanceProxy

__all__ = [name for name in dir() if not name.startswith("_")]
