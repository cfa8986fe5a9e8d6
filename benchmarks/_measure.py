"""Run a slimreg command or a Python snippet in a fresh process and return its peak RSS (ru_maxrss) and time."""

from __future__ import annotations

import subprocess
import sys
import time

# The peak is read from /proc/self/status VmHWM: Linux carries ru_maxrss over from the parent across fork and
# exec, so a child of a big benchmark process would report at least the parent's size.
HWM = ("import pathlib\n"
       "hwm = next(l for l in pathlib.Path('/proc/self/status').read_text().splitlines() if l.startswith('VmHWM'))\n"
       "print('MAXRSS_KB', hwm.split()[1], flush=True)\n")
CLI_WRAPPER = "import sys\nfrom slimreg.cli import main\ncode = main(sys.argv[1:])\n" + HWM + "sys.exit(code)\n"
SNIPPET_SUFFIX = "\n" + HWM


def _run(command: list[str], timeout: float | None) -> dict[str, float | str]:
    start = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout:.0f} s", "peak_mb": float("nan"), "seconds": timeout or 0}
    seconds = time.perf_counter() - start
    lines = [line for line in result.stdout.splitlines() if line.startswith("MAXRSS_KB")]
    if result.returncode != 0 or not lines:
        status = "killed (likely out of memory)" if result.returncode in (-9, 137) else \
            f"exit {result.returncode}: {(result.stderr.strip().splitlines() or [''])[-1][:200]}"
        return {"status": status, "peak_mb": float("nan"), "seconds": seconds}
    return {"status": "ok", "peak_mb": int(lines[-1].split()[1]) / 1024, "seconds": seconds}


def measure_cli(args: list[str], timeout: float | None = None) -> dict[str, float | str]:
    return _run([sys.executable, "-c", CLI_WRAPPER, *args], timeout)


def measure_snippet(code: str, timeout: float | None = None, python: str = sys.executable
                    ) -> dict[str, float | str]:
    """``code`` run by ``python`` (another venv's, for a peer kept out of the project's dependencies)."""
    return _run([python, "-c", code + SNIPPET_SUFFIX], timeout)
