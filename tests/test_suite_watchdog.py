"""The test suite's watchdog (tests/conftest.py): a test hung in C code with the GIL held ends
the run with every thread's stack, instead of hanging CI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HUNG = """
import ctypes


def test_hangs_in_c_holding_the_gil():
    ctypes.PyDLL(None).sleep(60)  # PyDLL keeps the GIL during the call
"""


def test_a_test_hung_in_c_ends_the_run_with_the_stacks(tmp_path):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_hung.py").write_text(HUNG)
    env = dict(os.environ, NORMZOO_TEST_HANG_EXIT_S="2")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", os.devnull]
    out = subprocess.run(
        [*cmd, "--rootdir", str(tmp_path), str(tmp_path / "test_hung.py")],
        capture_output=True,
        text=True,
        timeout=50,  # the hung test alone would take 60 s
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode != 0
    assert "Timeout (0:00:02)!" in out.stderr
    assert "test_hangs_in_c_holding_the_gil" in out.stderr  # the hung test's frame
