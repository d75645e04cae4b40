"""The ``convkit`` command as a user meets it: a backend that cannot run is one line and a non-zero
exit, every ``--help`` shows the defaults, and progress bars appear only on a terminal."""
from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import convkit
from convkit.cli import Progress, build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _convkit(*args, env=None):
    return subprocess.run([sys.executable, "-m", "convkit", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=dict(os.environ, **(env or {})))


# ------------------------------------------------------------------------- unusable backends
def _one_line(text):
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


@pytest.mark.skipif(convkit.backend_status("cuda")[0], reason="cuda runs here")
def test_demo_with_cuda_unavailable_prints_one_line():
    p = _convkit("demo", "classify", "--backend", "cuda")
    assert p.returncode == 2 and p.stdout == ""
    line = _one_line(p.stderr)
    assert line.startswith("convkit demo classify: backend 'cuda' cannot run here")


def test_demo_with_unknown_backend_prints_one_line():
    p = _convkit("demo", "detect", "--backend", "bogus")
    assert p.returncode == 2 and p.stdout == ""
    line = _one_line(p.stderr)
    assert line.startswith("convkit demo detect: unknown convkit backend 'bogus'")
    assert "numpy" in line                      # it lists the known names


@pytest.mark.parametrize("demo", ["classify", "detect"])
def test_unknown_backend_from_the_environment_is_one_line_too(demo, capsys, monkeypatch):
    monkeypatch.setenv("CONVKIT_BACKEND", "bogus")
    assert main(["demo", demo, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert _one_line(err).startswith(f"convkit demo {demo}: unknown convkit backend 'bogus'")


# ------------------------------------------------------------------------- --help and defaults
def _parsers(parser, path=("convkit",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


def _help_entries(text):
    """{option string: its whole help entry} from argparse's help text."""
    entries, cur = {}, None
    for line in text.splitlines():
        m = re.match(r"^  (-\S.*?)(?:\s{2,}|$)", line)
        if m:
            cur = [line]
            for opt in re.findall(r"(?<![\w-])--?[\w-]+", m.group(1)):
                entries[opt] = cur
        elif cur is not None and line.startswith("    "):
            cur.append(line)
        else:
            cur = None
    return {k: " ".join(" ".join(v).split()) for k, v in entries.items()}


def test_every_help_shows_the_defaults():
    seen = set()
    for path, parser in _parsers(build_parser()):
        seen.add(" ".join(path))
        entries = _help_entries(parser.format_help())
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            entry = entries[action.option_strings[-1]]
            d = action.default
            if d is None or d is False or d == []:
                continue   # a flag, or an option that is off unless given
            assert f"(default: {d})" in entry or "default" in (action.help or ""), (path, entry)
    assert {"convkit bench", "convkit demo classify", "convkit demo detect"} <= seen


def test_help_of_a_demo_names_its_defaults():
    text = " ".join(build_parser()._actions[-1].choices["demo"]._actions[-1]
                    .choices["detect"].format_help().split())
    assert "--epochs EPOCHS passes over the training images (default: 6)" in text
    assert "--lr LR Adam learning rate (cosine decay) (default: 0.002)" in text


# ------------------------------------------------------------------------- progress display
class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_draws_nothing_off_a_terminal_and_logs_plain_lines():
    stream, logged = io.StringIO(), []
    bar = Progress(10, "epoch 1/2", log=logged.append, stream=stream)
    for i in range(10):
        bar.update(loss=f"{i:.1f}")
    bar.close()
    assert stream.getvalue() == ""
    assert logged == [f"  epoch 1/2 step {i}/10: loss {i - 1:.1f}" for i in (2, 4, 6, 8, 10)]
    quiet = []
    bar = Progress(10, "x", enabled=False, log=quiet.append, stream=_Terminal())
    bar.update()
    bar.close()
    assert quiet == [] and bar.stream.getvalue() == ""


def test_progress_draws_a_bar_on_a_terminal():
    pytest.importorskip("tqdm")
    term, logged = _Terminal(), []
    bar = Progress(3, "epoch 1/1", log=logged.append, stream=term)
    for _ in range(3):
        bar.update(loss="0.5")
    bar.close()
    assert "epoch 1/1" in term.getvalue() and "0/3" in term.getvalue()   # tqdm's bar, drawn
    assert bar.bar.n == 3 and logged == []                       # a bar, not log lines


def test_progress_without_tqdm_redraws_one_line_on_a_terminal(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)          # `import tqdm` raises ImportError
    term = _Terminal()
    bar = Progress(2, "res_28 forward", stream=term)
    bar.update()
    bar.describe("res_28 forward+backward")
    bar.update()
    bar.close()
    text = term.getvalue()
    assert "\r[1/2] res_28 forward" in text and "\r[2/2] res_28 forward+backward" in text
    assert text.endswith("\n")


def test_demo_draws_no_bar_when_stderr_is_not_a_terminal(capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("tqdm")
    rc = main(["demo", "classify", "--backend", "numpy", "--epochs", "1", "--train-subset", "64",
               "--batch-size", "32"])
    assert rc == 0
    out = capsys.readouterr()
    assert out.err == ""                      # no tqdm bar in a captured (non-terminal) stderr
    assert "final test accuracy" in out.out
