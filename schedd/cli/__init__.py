"""The user commands: thin, stdlib-only HTTP clients (fast to start).

This package is imported before any command (and by the server, which prints
qstat's lines): it imports nothing and defines only :func:`exit_now`.
"""

TYPE_CHECKING = False  # typing is not imported on the command path
if TYPE_CHECKING:
    from typing import NoReturn


def exit_now(code: int) -> "NoReturn":
    """End the command's process with ``code`` once its output is flushed,
    skipping the interpreter's teardown: the final garbage collection and the
    freeing of every module and object, ~1.5 ms here (a sixth of a bare
    ``python -c pass``) and more after a long listing. Only for a process that
    is the command (its ``main()`` called without arguments, as the console
    scripts call it): nothing else is left to run there, while a caller that
    passes ``argv`` (tests, shell completion) gets the status returned.
    """
    import os
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed pipe (qstat | head) or stream: nothing more can be said
            pass
    os._exit(code)
