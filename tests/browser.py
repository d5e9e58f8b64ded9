"""A real headless browser for the tests: Debian's chromium, network off, driven from the command line.

Two ways to see what a page did, both without the DevTools protocol:
- a probe script injected at the top of a page file records JavaScript errors and which plots
  rendered into an attribute of <html>, read back from ``--dump-dom`` after ``--virtual-time-budget``;
- for a page we cannot change (optuna-dashboard's), the console lines chromium writes to stderr
  with ``--enable-logging=stderr``.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

# No network: a dead proxy and a resolver that finds no host but 127.0.0.1 (loopback is never
# proxied, so a server of the test is still reached); nothing of chromium's own that phones home.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--hide-scrollbars",
    "--proxy-server=127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--enable-logging=stderr",
    "--v=0",
]

PROBE = """<script>
window.__slurptunaErrors = [];
window.addEventListener('error', e => window.__slurptunaErrors.push('error: ' + (e.message || e.type)), true);
window.addEventListener('unhandledrejection', e => window.__slurptunaErrors.push('rejection: ' + e.reason));
const __consoleError = console.error;
console.error = function (...args) {
  window.__slurptunaErrors.push('console.error: ' + args.join(' '));
  __consoleError.apply(console, args);
};
window.addEventListener('load', () => setTimeout(() => {
  const figures = [...document.querySelectorAll('figure.plot')];
  document.documentElement.setAttribute('data-probe', JSON.stringify({
    errors: window.__slurptunaErrors,
    figures: figures.length,
    rendered: figures.filter(f => f.querySelector('.js-plotly-plot svg.main-svg')).length,
    resources: performance.getEntriesByType('resource').map(r => r.name),
  }));
}, 1000));
</script>"""


def chromium() -> str:
    """The chromium executable; skip when it is absent, unless SLURPTUNA_REQUIRE_BROWSER=1 (CI) says fail."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    why = "no chromium on PATH (Debian: apt-get install chromium)"
    if os.environ.get("SLURPTUNA_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{why}, and SLURPTUNA_REQUIRE_BROWSER=1")
    pytest.skip(why)


def run_chromium(
    url: str, profile: Path, *extra: str, timeout: float = 90
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run chromium once in its own process group (ended as a whole on timeout); its console lines."""
    command = [chromium(), *FLAGS, f"--user-data-dir={profile}", *extra, url]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"chromium did not finish {url} in {timeout} s")
    done = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    assert done.returncode == 0, f"chromium failed on {url}:\n{stderr[-3000:]}"
    return done, [line for line in stderr.splitlines() if ":CONSOLE" in line]


def dump_dom(url: str, profile: Path, budget_ms: int = 5000) -> tuple[str, list[str]]:
    """The page's DOM once its scripts ran for ``budget_ms`` of virtual time, and its console lines."""
    done, console = run_chromium(url, profile, f"--virtual-time-budget={budget_ms}", "--dump-dom")
    return done.stdout, console


def screenshot(url: str, profile: Path, png: Path, width: int = 1000, height: int = 1400) -> Path:
    run_chromium(url, profile, "--virtual-time-budget=5000", f"--window-size={width},{height}", f"--screenshot={png}")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"no PNG written to {png}"
    return png


def with_probe(page: Path, probed: Path) -> Path:
    """A copy of ``page`` with the probe as the first script of its <head>."""
    text = page.read_text(encoding="utf-8")
    assert "<head>" in text
    probed.write_text(text.replace("<head>", "<head>\n" + PROBE, 1), encoding="utf-8")
    return probed


def read_probe(dom: str) -> dict:
    found = re.search(r'\sdata-probe="([^"]*)"', dom)
    assert found, "the probe wrote nothing: the page's load event never came"
    return json.loads(html.unescape(found.group(1)))
