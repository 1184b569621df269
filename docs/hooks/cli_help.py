"""MkDocs hook: put each command's ``--help`` into its page, so the options never go stale.

A page line ``<!-- cli-help: simulate -->`` becomes the output of
``python -m vtrain_opt simulate --help`` (100 columns) in a code block. A command that
fails to print its help fails the build.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys

from mkdocs.exceptions import PluginError

MARKER = re.compile(r"^<!-- cli-help: ([a-z]*) -->$", re.MULTILINE)


@functools.cache
def _help(command: str) -> str:
    argv = [sys.executable, "-m", "vtrain_opt", *([command] if command else []), "--help"]
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    if done.returncode != 0:
        raise PluginError(f"`{' '.join(argv[1:])}` failed:\n{done.stderr}")
    return done.stdout.rstrip()


def on_page_markdown(markdown: str, **_: object) -> str:
    return MARKER.sub(lambda m: f"```text\n{_help(m.group(1))}\n```", markdown)
