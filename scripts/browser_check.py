#!/usr/bin/env python
"""Open a report.html in headless Chromium: screenshot it and check that it rendered.

The report's own script sets ``<div id="render-check" data-status="ok" data-images="n/n"
data-examples="k">`` on the load event once every <img> has naturalWidth > 0 and the
feature browser drew its examples. This script dumps the DOM after JavaScript ran
(``--dump-dom``), reads that marker, optionally checks that given texts appear in the
rendered DOM (e.g. a Japanese example joined without spaces), and takes two screenshots: the page from the top (``--screenshot``) and the feature
browser alone (``<name>_browser.png``, via the report's ``#only=browser`` fragment).

    python scripts/browser_check.py out/report.html --screenshot out/report.png \
        [--fragment 'sae=0&feature=3'] [--expect-text 猫が好きです]

Exit status: 0 ok; 1 the page did not render as expected; 2 chromium is absent (install it
with `apt-get install -y chromium`, or point $CHROMIUM at the binary).
"""

from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--virtual-time-budget=5000",
]


def find_chromium() -> str | None:
    """Path of a Chromium binary ($CHROMIUM, /usr/bin/chromium, or on PATH), or None."""
    for cand in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                 shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if cand and Path(cand).exists():
            return cand
    return None


def _run(binary: str, extra: list[str], url: str, timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as prof:
        return subprocess.run([binary, *FLAGS, f"--user-data-dir={prof}", *extra, url],
                              capture_output=True, timeout=timeout, check=False)


def check(report: Path, screenshot: Path, expect_text: list[str], timeout: float = 120.0,
          fragment: str = "") -> list[str]:
    """Render ``report``; return a list of problems (empty when the page is fine)."""
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("chromium not found: install it with `apt-get install -y chromium` "
                                "or set $CHROMIUM to a Chromium/Chrome binary")
    url = report.resolve().as_uri() + (f"#{fragment.lstrip('#')}" if fragment else "")
    problems = []
    dom = _run(binary, ["--dump-dom"], url, timeout)
    text = dom.stdout.decode("utf-8", errors="replace")
    m = re.search(r'<div[^>]*id="render-check"[^>]*>', text)
    if dom.returncode != 0 or not m:
        problems.append(f"no render-check marker in the dumped DOM (chromium rc={dom.returncode}; "
                        f"stderr tail: {dom.stderr.decode(errors='replace')[-400:]})")
    else:
        attrs = dict(re.findall(r'data-([\w-]+)="([^"]*)"', m.group(0)))
        if attrs.get("status") != "ok":
            problems.append(f"render-check says {attrs} (images loaded / total, examples drawn)")
    unescaped = html.unescape(text)
    for t in expect_text:
        if t not in unescaped:
            problems.append(f"expected text {t!r} not in the rendered DOM")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    # Two screenshots: the page from the top, and the feature browser alone (#only=browser).
    browser_shot = screenshot.with_name(screenshot.stem + "_browser.png")
    browser_url = url + ("&" if "#" in url else "#") + "only=browser"
    for path, u in ((screenshot, url), (browser_shot, browser_url)):
        shot = _run(binary, [f"--screenshot={path}", "--window-size=1400,2400"], u, timeout)
        if shot.returncode != 0 or not path.exists() or path.stat().st_size == 0:
            problems.append(f"screenshot {path} failed (rc={shot.returncode}): "
                            f"{shot.stderr.decode(errors='replace')[-400:]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("report", type=Path, help="path of report.html")
    ap.add_argument("--screenshot", type=Path, default=None, help="PNG to write (default: next to the report)")
    ap.add_argument("--expect-text", action="append", default=[], help="text that must appear in the rendered DOM")
    ap.add_argument("--fragment", default="", help="URL fragment, e.g. 'sae=0&feature=3' to open a feature")
    ap.add_argument("--timeout", type=float, default=120.0)
    a = ap.parse_args(argv)
    if not a.report.exists():
        print(f"error: {a.report} does not exist; run `write_report(study_dir)` first", file=sys.stderr)
        return 1
    shot = a.screenshot or a.report.with_name(a.report.stem + "_screenshot.png")
    try:
        problems = check(a.report, shot, a.expect_text, a.timeout, a.fragment)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except subprocess.TimeoutExpired:
        print(f"error: chromium did not finish within {a.timeout} s", file=sys.stderr)
        return 1
    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    if not problems:
        print(f"ok: {a.report} rendered; screenshot {shot}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
