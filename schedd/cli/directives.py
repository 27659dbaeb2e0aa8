"""``#PBS`` directives: the qsub options written inside a job script.

The rules are PBS's:

* the prefix is ``-C PREFIX`` if given, else ``$PBS_DPREFIX``, else ``#PBS``;
  an empty prefix turns scanning off;
* a directive is a line that starts (in column 1) with the prefix followed by
  white space; its options are split as the shell would (quotes kept
  together) and a word starting with ``#`` begins a comment;
* scanning stops at the first line that is neither blank nor a comment: a
  directive after the first command is part of the script, not an option;
* options on the command line win over directives (qsub merges the two).

Stdlib only; ``shlex`` is imported only when a script has a directive.
"""

__all__ = ["DEFAULT_PREFIX", "Directive", "prefix_of", "scan"]

DEFAULT_PREFIX = "#PBS"


class Directive:
    """One directive line: its 1-based line number, its text and its words."""

    __slots__ = ("line", "text", "words")

    def __init__(self, line: int, text: str, words: list[str]) -> None:
        self.line, self.text, self.words = line, text, words

    def __repr__(self) -> str:
        return f"Directive({self.line}, {self.words!r})"


def prefix_of(option: str | None, environ: dict[str, str] | None) -> str:
    """The directive prefix: ``-C`` wins over ``PBS_DPREFIX``, which wins over ``#PBS``.

    >>> prefix_of(None, {}), prefix_of(None, {"PBS_DPREFIX": "#X"}), prefix_of("", {"PBS_DPREFIX": "#X"})
    ('#PBS', '#X', '')
    """
    if option is not None:
        return option
    if environ is not None and "PBS_DPREFIX" in environ:
        return environ["PBS_DPREFIX"]
    return DEFAULT_PREFIX


def scan(script: str, prefix: str = DEFAULT_PREFIX) -> list[Directive]:
    """The directives of ``script``, in order; raises ValueError naming the line.

    >>> scan("#!/bin/bash\\n#PBS -N hello  # a name\\n\\n#PBS -l select=1:ngpus=1\\necho hi\\n#PBS -N late\\n")
    [Directive(2, ['-N', 'hello']), Directive(4, ['-l', 'select=1:ngpus=1'])]
    >>> scan("#PBS -N x\\n", "")
    []
    """
    if not prefix:
        return []
    out: list[Directive] = []
    for number, line in enumerate(script.splitlines(), 1):
        stripped = line.strip()
        if line.startswith(prefix):
            rest = line[len(prefix):]
            if not rest.strip():
                continue  # "#PBS" alone: a comment
            if not rest[0].isspace():
                continue  # "#PBSX ...": another word, a comment
            try:
                words = _words(rest)
            except ValueError as e:
                raise ValueError(f"line {number}: {stripped!r}: {e}") from None
            for i, w in enumerate(words):
                if w.startswith("#"):
                    words = words[:i]
                    break
            if words:
                out.append(Directive(number, stripped, words))
        elif stripped and not stripped.startswith("#"):
            break  # the first command: directives end here
    return out


#: What makes ``shlex.split`` differ from ``str.split``: quoting, escapes, and the
#: ASCII whitespace that ``str.split`` splits on and shlex does not.
_SHELL_SPECIAL = frozenset("\"'\\\x0b\x0c\x1c\x1d\x1e\x1f")


def _words(text: str) -> list[str]:
    """``shlex.split(text, posix=True)``; ``shlex`` (and the ``re`` it imports, a
    third of a command's start-up) only for a line that quotes or escapes.

    >>> _words("-l select=1:ncpus=2  -N 'a b'")
    ['-l', 'select=1:ncpus=2', '-N', 'a b']
    """
    if text.isascii() and _SHELL_SPECIAL.isdisjoint(text):
        return text.split()
    import shlex

    return shlex.split(text, comments=False, posix=True)
