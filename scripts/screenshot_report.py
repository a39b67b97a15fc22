#!/usr/bin/env python3
"""Render a normscope report.html in headless Chromium and save a PNG screenshot.

Usage: ``python scripts/screenshot_report.py OUT_DIR/report.html [-o shot.png] [--width 1400] [--height 4000]``

Needs Debian's ``chromium`` (``apt-get install -y chromium``); the browser runs with networking
features off and a throw-away profile, so the screenshot also shows whether the page renders
without any external resource.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(html: Path, png: Path, *, width: int = 1400, height: int = 4000, timeout: float = 120.0) -> Path:
    """Screenshot ``html`` into ``png`` with headless Chromium; raises RuntimeError on failure."""
    exe = find_chromium()
    if exe is None:
        raise RuntimeError("chromium not found; install it with: apt-get install -y chromium")
    html, png = Path(html).resolve(), Path(png).resolve()
    if not html.is_file():
        raise RuntimeError(f"{html} does not exist")
    with tempfile.TemporaryDirectory(prefix="normscope-chromium-") as profile:
        cmd = [
            exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={png}",
            f"--window-size={width},{height}", html.as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if not png.is_file() or png.stat().st_size == 0:
        raise RuntimeError(f"chromium produced no screenshot (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return png


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html", type=Path)
    ap.add_argument("-o", "--out", type=Path, default=None, help="PNG path (default: next to the HTML)")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=4000)
    a = ap.parse_args(argv)
    out = a.out or a.html.with_name("screenshot.png")
    try:
        print(screenshot(a.html, out, width=a.width, height=a.height))
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"screenshot failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
