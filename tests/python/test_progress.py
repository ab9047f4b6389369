"""Progress bars: on stderr when it is a terminal, never otherwise (issue #5 point 5)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from _dtutil import run_on_pty

import deathtensors as dt

CLI = [sys.executable, "-m", "deathtensors"]


@pytest.fixture
def big_file(tmp_path):
    p = tmp_path / "pg.deathtensors"
    dt.save(p, {"a": np.ones(1 << 20, dtype=np.float32), "b": np.arange(1 << 20, dtype=np.int32)}, checksum=True)
    return p


@pytest.mark.parametrize("command", [["verify"], ["stats"]])
def test_progress_bar_only_on_a_terminal(big_file, command):
    env = dict(os.environ, DEATHTENSORS_PROGRESS_MIN_BYTES="1")
    proc, tty_err = run_on_pty([*CLI, *command, str(big_file)], env)
    assert proc.returncode == 0
    assert command[0] in tty_err and "[" in tty_err, tty_err  # the bar was drawn
    piped = subprocess.run([*CLI, *command, str(big_file)], capture_output=True, text=True, env=env)
    assert piped.returncode == 0 and piped.stderr == ""  # no bar into a pipe
    assert proc.stdout.decode() == piped.stdout  # same output either way


def test_small_work_draws_no_bar_even_on_a_terminal(big_file):
    proc, tty_err = run_on_pty([*CLI, "verify", str(big_file)], dict(os.environ))
    assert proc.returncode == 0 and "verify [" not in tty_err
