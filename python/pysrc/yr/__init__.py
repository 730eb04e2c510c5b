"""yr: openYuanrong's Python API over yr's Rust runtime.

First slice (issue 11): connecting a driver (`init`, `finalize`, `is_initialized`) and objects of
bytes (`put`, `get`, `wait`). Bytes put here are read unchanged by Rust drivers and functions,
and the other way round. Functions, instances, pickled values and zero-copy numpy come next.
"""

from typing import List, Optional, Sequence, Tuple, Union

from . import _yr
from ._yr import (
    ConnectError,
    GetTimeoutError,
    NotInitializedError,
    ObjectLostError,
    ObjectRef,
    PlatformError,
    TaskError,
    YRError,
)

__all__ = [
    "Config", "init", "finalize", "is_initialized", "put", "get", "wait", "ObjectRef",
    "YRError", "ConnectError", "TaskError", "PlatformError", "ObjectLostError",
    "GetTimeoutError", "NotInitializedError",
]


class Config:
    """How `init` finds the cluster: `session` names a session folder (or its session.json);
    without it, `$YR_SESSION`, `$YR_MASTER_ADDRESS` or the newest session on this host."""

    def __init__(self, session: Optional[str] = None):
        self.session = session


def init(conf: Optional[Config] = None) -> None:
    """Connects this process to the cluster (once; a second call reconnects)."""
    _yr.init(conf.session if conf is not None else None)


def finalize() -> None:
    """Disconnects this process from the cluster."""
    _yr.finalize()


def is_initialized() -> bool:
    return _yr.is_initialized()


def put(value: Union[bytes, bytearray, memoryview]) -> ObjectRef:
    """Stores a bytes-like value in this node's data worker and returns its reference."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"yr.put takes bytes, bytearray or memoryview for now, not {type(value).__name__}"
        )
    # One more copy for bytearray/memoryview until the buffer path into shared memory lands.
    return _yr.put_bytes(value if isinstance(value, bytes) else bytes(value))


def get(refs: Union[ObjectRef, Sequence[ObjectRef]], timeout: Optional[float] = None):
    """The value of a reference (or a list of values for a list of references), waiting up to
    `timeout` seconds (forever when None); raises GetTimeoutError when it runs out."""
    if isinstance(refs, ObjectRef):
        return _yr.get_bytes(refs, timeout)
    return [_yr.get_bytes(r, timeout) for r in refs]


def wait(
    refs: Sequence[ObjectRef], wait_num: int = 1, timeout: Optional[float] = None
) -> Tuple[List[ObjectRef], List[ObjectRef]]:
    """Waits until `wait_num` of `refs` are ready or `timeout` seconds pass: (ready, not ready)."""
    return _yr.wait(list(refs), wait_num, timeout)
