"""`lambda-eclipse build-dataset` run as a user runs it, in a child process whose log a test can wait on."""

import os
import subprocess
import sys
import threading
import time


class Build:
    """`lambda-eclipse build-dataset` in a child process, reporting to the session's Prefect API (`api_url`, the
    prefect_api_url fixture); its stderr lines as they come."""

    def __init__(self, photos, out, args: list[str], api_url: str, ray_address: str | None = None):
        cmd = [sys.executable, "-m", "flows.cli", "build-dataset", "--input", str(photos), "--output", str(out), *args]
        env = os.environ | {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": api_url}
        env.pop("RAY_ADDRESS", None)
        if ray_address:
            env["RAY_ADDRESS"] = ray_address
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr or []), daemon=True)
        self.reader.start()

    def wait_for(self, text: str, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if time.monotonic() > deadline or self.proc.poll() is not None and not self.reader.is_alive():
                raise AssertionError(f"no {text!r} in the build's log:\n" + "".join(self.lines[-40:]))
            time.sleep(0.1)

    def finish(self, timeout: float = 900) -> tuple[int, str, str]:
        out = self.proc.stdout.read() if self.proc.stdout else ""
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=60)
        return code, out, "".join(self.lines)
