"""The ``convkit`` command: ``info``, ``bench``, ``demo NAME``.

Also what its subcommands share: :class:`Parser` (every ``--help`` shows the defaults) and
:class:`Progress` (a progress bar on a terminal only).
"""
from __future__ import annotations

import argparse
import sys


class _DefaultsFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help unless the help already says what the
    default is; flags (default False) and options without a default (None, []) get nothing."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if (not action.option_strings or "default" in text or d is None or d is False
                or d is argparse.SUPPRESS or d == []):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse's parser with the defaults in ``--help``; subcommands inherit it
    (``add_subparsers`` makes parsers of the same class)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):   # no isatty, or a closed stream
        return False


class Progress:
    """Progress of a loop of ``total`` steps, drawn on stderr only when stderr is a terminal.

    On a terminal: a tqdm bar (without tqdm, one ``[i/n] label`` line redrawn in place).  Not on
    a terminal (a pipe, a file, a test's captured output) no bar is drawn, so logs get no
    control characters; ``log``, when given, then receives a plain line about every fifth of the
    loop, for loops long enough that a log should show them moving.  ``enabled=False``
    (``--no-progress``) shows nothing at all.
    """

    def __init__(self, total, desc="", *, enabled=True, log=None, unit="it", stream=None):
        self.total, self.desc, self.i, self.postfix = total, desc, 0, ""
        self.stream = sys.stderr if stream is None else stream
        self.bar = None
        self.drawn = False
        self.terminal = enabled and _is_terminal(self.stream)
        self.log = log if enabled and not self.terminal else None
        if self.terminal:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=total, desc=desc, file=self.stream, unit=unit, leave=False)

    def describe(self, label):
        """Name the step now running (a bench op, say)."""
        self.desc = label
        if self.bar is not None:
            self.bar.set_description_str(label)
        elif self.terminal:
            self._redraw()

    def update(self, **postfix):
        """One step done; ``postfix`` (e.g. ``loss="0.123"``) is shown beside the bar."""
        self.i += 1
        if postfix:
            self.postfix = ", ".join(f"{k} {v}" for k, v in postfix.items())
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)
        elif self.terminal:
            self._redraw()
        elif self.log is not None and (self.i % max(1, self.total // 5) == 0
                                       or self.i == self.total):
            self.log(f"  {self.desc} step {self.i}/{self.total}"
                     + (f": {self.postfix}" if self.postfix else ""))

    def _redraw(self):
        line = f"[{self.i}/{self.total}] {self.desc}" + (f" {self.postfix}" if self.postfix else "")
        print(f"\r{line:60s}", end="", file=self.stream, flush=True)
        self.drawn = True

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.drawn:
            print(file=self.stream)


def build_parser() -> Parser:
    """The ``convkit`` parser with every subcommand's arguments."""
    p = Parser(prog="convkit", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="versions, backends and whether each loads, threads, BLAS, GPUs")
    from . import benchmark, demos

    benchmark.add_arguments(sub.add_parser("bench", help="time the layer suite: convkit backends "
                                                         "vs torch, side by side"))
    demos.add_arguments(sub.add_parser("demo", help="train a model: " + ", ".join(demos.DEMOS),
                                       description=demos.__doc__.split("\n\n")[0]))
    return p


def main(argv=None) -> int:
    from . import benchmark, demos

    args = build_parser().parse_args(argv)
    if args.cmd == "info":
        from ._info import show_config

        show_config()
        return 0
    if args.cmd == "bench":
        return benchmark.run(args)
    return demos.run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
