"""The runner of launched scripts (conftest.run_launched) must fail a hung run, with its stacks, and never hang."""

from __future__ import annotations

import sys
import time

from conftest import run_launched

# A launcher whose worker lives in a session of its own (as torchrun's workers do) and never exits: killing the
# launcher's process group alone would leave the worker holding the output pipe.
LAUNCHER = """
import subprocess, sys
subprocess.Popen([sys.executable, "-c", "import time; print('worker up', flush=True); time.sleep(600)"],
                 start_new_session=True)
import time; time.sleep(600)
"""


def test_a_hung_run_fails_with_stacks_and_leaves_no_process(tmp_path):
    import psutil

    start = time.monotonic()
    returncode, output = run_launched([sys.executable, "-c", LAUNCHER], {}, str(tmp_path), timeout=3)
    assert returncode == -9
    assert time.monotonic() - start < 30
    assert "worker up" in output  # what the worker printed before it hung comes back
    assert output.count("Fatal Python error: Aborted") == 2  # faulthandler: the stacks of both processes
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if "print('worker up'" in " ".join(p.info["cmdline"] or [])]
    assert not leftovers
