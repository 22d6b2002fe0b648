"""tools.audit_deps against a real local HTTP index serving hand-made project documents.

The server listens on 127.0.0.1 (port 0) in a thread; nothing here touches the internet.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import free_port
from tools import audit_deps
from tools.audit_deps import AllowlistError, audit, load_allowlist, main

ECDSA_ADVISORIES = [
    {
        "id": "PYSEC-2026-1325",
        "aliases": ["CVE-2024-23342", "GHSA-wj6h-64fc-37mp"],
        "details": "python-ecdsa has been found to be subject to a Minerva timing attack on the P-256 curve.",
        "summary": None,
        "fixed_in": [],
        "link": "https://osv.dev/vulnerability/PYSEC-2026-1325",
        "source": "osv",
        "withdrawn": None,
    },
    {
        "id": "GHSA-wj6h-64fc-37mp",
        "aliases": ["CVE-2024-23342", "PYSEC-2026-1325"],
        "details": "python-ecdsa is subject to a Minerva timing attack.",
        "summary": "Minerva timing attack on P-256 in python-ecdsa",
        "fixed_in": [],
        "link": "https://osv.dev/vulnerability/GHSA-wj6h-64fc-37mp",
        "source": "osv",
        "withdrawn": None,
    },
]

WITHDRAWN = [
    {
        "id": "GHSA-xxxx-withdrawn",
        "aliases": [],
        "details": "Reported by mistake.",
        "summary": "withdrawn advisory",
        "fixed_in": ["9.9"],
        "link": "https://osv.dev/vulnerability/GHSA-xxxx-withdrawn",
        "withdrawn": "2024-05-01T00:00:00Z",
    }
]

# Normalised name -> (latest version, vulnerabilities); names missing here answer 404.
PROJECTS: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "safe-lib": ("2.0.0", []),
    "ecdsa": ("0.19.2", ECDSA_ADVISORIES),
    "had-withdrawn": ("1.4", WITHDRAWN),
    "old-lib": ("3.1.0", ECDSA_ADVISORIES[:1]),
    "typing-extensions": ("4.16.0", []),
}


class IndexHandler(BaseHTTPRequestHandler):
    requests_seen: list[str] = []

    def do_GET(self) -> None:
        IndexHandler.requests_seen.append(self.path)
        parts = self.path.strip("/").split("/")
        project = (
            PROJECTS.get(parts[1]) if len(parts) == 3 and parts[0] == "pypi" and parts[2] == "json" else None
        )
        if project is None:
            self.send_error(404, "Not Found")
            return
        latest, vulns = project
        body = json.dumps({"info": {"name": parts[1], "version": latest}, "vulnerabilities": vulns}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass


@pytest.fixture(scope="module")
def index_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), IndexHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def dead_url() -> str:
    """A loopback port nobody listens on: connections are refused at once."""
    return f"http://127.0.0.1:{free_port()}"


def write_allow(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "audit-allow.toml"
    path.write_text(text, encoding="utf-8")
    return path


def run_cli(
    index_url: str, packages: dict[str, str], *extra: str, allow: Path | None = None, tmp_path: Path
) -> int:
    allow_path = allow if allow is not None else tmp_path / "absent-allow.toml"
    argv = ["--index-url", index_url, "--allow", str(allow_path), "--retry-delay", "0", *extra]
    return main(argv, packages=packages)


def outcome(report: audit_deps.Report, name: str) -> audit_deps.PackageResult:
    (result,) = [r for r in report.results if r.name == name]
    return result


def test_ok_when_latest_has_no_advisory(
    index_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(index_url, {"safe-lib": "2.0.0", "typing_extensions": "4.16.0"}, tmp_path=tmp_path) == 0
    out = capsys.readouterr().out
    assert "audit: PASS: 2 ok, 0 vulnerable" in out
    report = audit({"Safe_Lib": "2.0.0"}, index_url)
    assert outcome(report, "safe-lib").outcome == "ok"  # PEP 503 normalisation


def test_vulnerable_fails_and_shows_the_advisory(
    index_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(index_url, {"safe-lib": "2.0.0", "ecdsa": "0.19.2"}, tmp_path=tmp_path) == 1
    out = capsys.readouterr().out
    assert "vulnerable" in out and "PYSEC-2026-1325" in out and "GHSA-wj6h-64fc-37mp" in out
    assert "NOT ADDRESSED" in out and "no fixed version published" in out and "Minerva" in out
    assert "audit: FAIL: 1 ok, 1 vulnerable" in out


def test_allowlisted_advisory_passes_with_its_reason(
    index_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One entry by the GHSA id covers both records (the PYSEC one lists it as an alias).
    allow = write_allow(
        tmp_path,
        '[[ignore]]\nid = "GHSA-wj6h-64fc-37mp"\npackage = "ECDSA"\n'
        'reason = "we never sign with ecdsa; only the test tooling installs it"\n',
    )
    assert run_cli(index_url, {"ecdsa": "0.19.2"}, allow=allow, tmp_path=tmp_path) == 0
    out = capsys.readouterr().out
    assert "addressed" in out
    assert "ADDRESSED: we never sign with ecdsa; only the test tooling installs it" in out
    assert "audit: PASS" in out


def test_allowlist_for_another_package_does_not_apply(index_url: str, tmp_path: Path) -> None:
    allow = write_allow(
        tmp_path, '[[ignore]]\nid = "GHSA-wj6h-64fc-37mp"\npackage = "other"\nreason = "n/a"\n'
    )
    report = audit({"ecdsa": "0.19.2"}, index_url, load_allowlist(allow))
    assert outcome(report, "ecdsa").outcome == "vulnerable"
    assert [e.package for e in report.unused_allow] == ["other"]


def test_withdrawn_advisories_are_ignored(index_url: str) -> None:
    report = audit({"had-withdrawn": "1.4"}, index_url)
    result = outcome(report, "had-withdrawn")
    assert result.outcome == "ok" and result.advisories == []
    assert report.exit_code() == 0


def test_behind_is_a_warning_unless_strict(
    index_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    packages = {"old-lib": "3.0.9", "safe-lib": "2.0.0"}
    assert run_cli(index_url, packages, tmp_path=tmp_path) == 0
    out = capsys.readouterr().out
    assert "behind" in out
    assert "advisories only for the latest release, so this version cannot be checked" in out
    assert "WARNING: 1 distribution(s)" in out and "audit: PASS" in out
    # The latest old-lib has an advisory, but it says nothing about 3.0.9: no claim either way.
    assert "PYSEC-2026-1325" not in out

    assert run_cli(index_url, packages, "--strict", tmp_path=tmp_path) == 1
    assert "audit: FAIL" in capsys.readouterr().out


def test_ahead_and_local_builds(index_url: str) -> None:
    report = audit({"safe-lib": "2.1.0rc1", "typing-extensions": "4.16.0+local"}, index_url)
    assert outcome(report, "safe-lib").outcome == "ahead"
    assert outcome(report, "typing-extensions").outcome == "ok"  # a local build of the latest release
    assert report.exit_code() == 0 and report.exit_code(strict=True) == 1


def test_not_on_index_is_unknown_and_fails(
    index_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(index_url, {"safe-lib": "2.0.0", "private-thing": "1.0"}, tmp_path=tmp_path) == 1
    out = capsys.readouterr().out
    assert "unknown" in out and "not found on the index" in out and "404" in out
    assert "ERROR: 1 lookup(s) failed" in out


def test_server_down_fails_loudly(dead_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_cli(dead_url, {"safe-lib": "2.0.0", "ecdsa": "0.19.2"}, "--retries", "1", tmp_path=tmp_path)
    assert code == 1
    out = capsys.readouterr().out
    assert "ERROR: no lookup succeeded against" in out and "This is a failure, not a pass" in out
    assert "cannot reach" in out and "gave up after 2 attempts" in out
    assert "audit: FAIL: 0 ok, 0 vulnerable, 0 addressed, 0 behind, 0 ahead, 2 unknown" in out


def test_allowlist_entry_without_reason_is_an_error(
    index_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    allow = write_allow(
        tmp_path,
        '[[ignore]]\nid = "GHSA-ok"\npackage = "a"\nreason = "fine"\n\n'
        '[[ignore]]\nid = "GHSA-wj6h-64fc-37mp"\npackage = "ecdsa"\nreason = "  "\n',
    )
    with pytest.raises(
        AllowlistError, match=r"entry #2 \(id='GHSA-wj6h-64fc-37mp', package='ecdsa'\) has no reason"
    ):
        load_allowlist(allow)
    assert run_cli(index_url, {"ecdsa": "0.19.2"}, allow=allow, tmp_path=tmp_path) == 2
    err = capsys.readouterr().err
    assert "GHSA-wj6h-64fc-37mp" in err and "has no reason" in err


def test_missing_allowlist_is_empty(tmp_path: Path) -> None:
    assert load_allowlist(tmp_path / "nope.toml") == []


def test_json_report_is_written_atomically(index_url: str, tmp_path: Path) -> None:
    target = tmp_path / "results" / "audit.json"
    code = run_cli(index_url, {"ecdsa": "0.19.2", "old-lib": "1.0"}, "--json", str(target), tmp_path=tmp_path)
    assert code == 1
    report = json.loads(target.read_text())
    assert (
        report["exit_code"] == 1 and report["counts"]["vulnerable"] == 1 and report["counts"]["behind"] == 1
    )
    by_name = {r["name"]: r for r in report["results"]}
    assert by_name["ecdsa"]["advisories"][0]["id"] == "PYSEC-2026-1325"
    assert [p.name for p in target.parent.iterdir()] == ["audit.json"]  # no temp file left behind


def test_installed_distributions_skips_the_project() -> None:
    installed = audit_deps.installed_distributions()
    assert "sbir-service" not in installed
    assert "pytest" in installed and "packaging" in installed
    assert all(name == audit_deps.normalize(name) for name in installed)
