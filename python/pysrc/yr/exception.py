"""The exceptions of `yr`, with openYuanrong's names and bases.

openYuanrong's documented examples catch builtins (`except TimeoutError`, `except RuntimeError`),
so each class also derives from the builtin it stands for. yr adds one named class per kind of
platform failure (a missing function, a dead instance, a call timeout, a lost object), so a caller
can tell them apart without reading messages; the native module raises these classes by name.
"""

import traceback as _traceback


class YRError(Exception):
    """Any error of yr. `code` is openYuanrong's numeric error code where one applies."""

    code = 3003

    def __init__(self, message="", code=None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self):
        return self.message


class YRRuntimeError(YRError, RuntimeError):
    """A failure while running something on the cluster."""


class YRTimeoutError(YRRuntimeError, TimeoutError):
    """Something ran out of time."""

    code = 4005


class YRValueError(YRError, ValueError):
    """A bad argument value."""

    code = 1001


class YRTypeError(YRError, TypeError):
    """A bad argument type."""

    code = 1001


class CancelError(YRError):
    """A stateless call was cancelled."""

    def __init__(self, task_id=""):
        super().__init__(f"stateless request has been cancelled: {task_id}")


class YRequestError(YRRuntimeError):
    """A request to the cluster failed."""


class GetTimeoutError(YRTimeoutError):
    """`yr.get` or `yr.wait` waited its whole timeout."""


class ConnectError(YRRuntimeError):
    """The cluster could not be reached."""

    code = 3002


class NotInitializedError(YRRuntimeError):
    """A call that needs the cluster came before `yr.init()`."""


class PlatformError(YRRuntimeError):
    """The platform could not run a call (no capacity, no instance, ...)."""

    code = 1002


class FunctionNotFoundError(PlatformError):
    """The function or instance a call names does not exist."""

    code = 1015


class InstanceDiedError(PlatformError):
    """The instance serving a call died or was terminated."""

    code = 1007


class CallTimeoutError(PlatformError, YRTimeoutError):
    """A call ran longer than its timeout."""

    code = 4005


class ObjectLostError(YRRuntimeError):
    """The only copy of an object is gone (its node died)."""


class TaskError(YRRuntimeError):
    """A remote function that is not Python failed (its error text is the message)."""

    code = 2002


class YRInvokeError(YRRuntimeError):
    """A remote Python function raised: `cause` is its exception, `traceback_str` the remote
    traceback (which is also the message). `yr.get` raises a class derived from both this and
    the cause's class, so `except ValueError` catches a remote ValueError."""

    code = 2002

    def __init__(self, cause, traceback_str):
        super().__init__(traceback_str)
        self.cause = cause
        self.traceback_str = traceback_str

    def origin_error(self):
        """This error as an instance of a class that derives from both YRInvokeError and the
        cause's class."""
        cls = type(self.cause)
        if isinstance(self.cause, YRError):
            return self
        try:
            both = _invoke_error_class(cls)
            err = both.__new__(both)
            YRInvokeError.__init__(err, self.cause, self.traceback_str)
            err.args = (self.traceback_str,)
            return err
        except TypeError:
            # A class that cannot be a base (final builtins, layout conflicts).
            return self

    def __reduce__(self):
        return (YRInvokeError, (self.cause, self.traceback_str))


_classes = {}


def _invoke_error_class(cls):
    both = _classes.get(cls)
    if both is None:
        both = type(f"YRInvokeError({cls.__name__})", (YRInvokeError, cls), {
            "__str__": lambda self: self.traceback_str,
            "__getattr__": lambda self, name: getattr(self.cause, name),
        })
        _classes[cls] = both
    return both


def invoke_error(exc):
    """The error a remote call reports for `exc` raised in it, with its traceback."""
    text = "".join(_traceback.format_exception(type(exc), exc, exc.__traceback__))
    return YRInvokeError(exc, text)
