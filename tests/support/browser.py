"""The browser for the page tests: Debian's Chromium (`/usr/bin/chromium`, installed by `make test`
through apt), driven by Playwright's `executable_path`; Playwright never downloads a browser here."""

from __future__ import annotations

import os
import shutil

# None when no Chromium is installed: the page tests are skipped with the reason.
CHROMIUM = os.environ.get("SBIR_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")

# Flags for a sandbox without a display or network, run as root.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
