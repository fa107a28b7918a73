"""Every script in tools/ imports from a checkout and takes tools/ off sys.path before importing anything heavy."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# tools/profile.py is the one script that may be imported as `profile`: imported, it hands over the standard library's
# module, and it fixes sys.path in main() (tests/profiling/test_cli.py covers both).
TOOLS = sorted(p for p in glob.glob(os.path.join(REPO, "tools", "*.py")) if os.path.basename(p) != "profile.py")


def test_each_tool_imports_with_tools_first_on_sys_path_and_removes_it() -> None:
    """Python puts a script's folder first on sys.path; there tools/profile.py shadows the stdlib `profile` that
    torch._dynamo imports (through cProfile) when timm loads. Each tool's module body runs here as it would as a
    script (tools/ first, run from another folder, no PYTHONPATH) but without calling main()."""
    assert len(TOOLS) >= 9
    code = f"""
import os, runpy, sys
tools = {os.path.join(REPO, "tools")!r}
for path in {TOOLS!r}:
    sys.path.insert(0, tools)
    runpy.run_path(path, run_name="imported_by_test")
    assert tools not in [os.path.abspath(p or ".") for p in sys.path], path + " leaves tools/ on sys.path"
import profile, timm
assert profile.__file__ and not profile.__file__.startswith(tools), profile.__file__
print("ok", len({TOOLS!r}))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["ok", str(len(TOOLS))]
