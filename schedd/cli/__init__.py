"""The user commands: thin, stdlib-only HTTP clients (fast to start).

This package is imported before any command (and by the server, which prints
qstat's lines): it imports nothing and defines only :func:`command` and
:func:`exit_now`. Neither it nor the modules plain ``qstat`` and ``qsub job.sh``
load import ``__future__`` (~0.2 ms, 2 % of the interpreter's start): their
annotations that name what only the type checker imports are strings.
"""

import sys

TYPE_CHECKING = False  # typing is not imported on the command path
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn, Protocol

    class Main(Protocol):
        def __call__(self, argv: list[str] | None = None) -> int: ...


def command(body: "Callable[[list[str]], int]") -> "Main":
    """A command's ``main`` from its ``body``: ``main(argv)`` returns the status
    (tests, shell completion); ``main()`` — the console script — runs the body on
    this process's arguments and ends the process with the status as soon as it
    is known (:func:`exit_now`)."""

    def main(argv: "list[str] | None" = None) -> int:
        code = body(sys.argv[1:] if argv is None else argv)
        return code if argv is not None else exit_now(code)

    main.__doc__, main.__module__ = body.__doc__, body.__module__
    return main


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

    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed pipe (qstat | head) or stream: nothing more can be said
            pass
    os._exit(code)
