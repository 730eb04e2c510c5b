"""`python -m yr.worker`: a Python function process, started by a yr agent (provisional: task
mode only; the function-service side is being written)."""

import os
import sys

from . import _yr


def main():
    from . import _task
    _task.setup()
    _yr.serve(_task.handle_call, True)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - the agent reports stderr's tail
        print(f"yr function process: {e}", file=sys.stderr)
        sys.exit(1)
    os._exit(0)
