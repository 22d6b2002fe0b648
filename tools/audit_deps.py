"""Audit the installed Python distributions against the package index's vulnerability data.

Run as ``python -m tools.audit_deps`` (``make audit``). Standard library only, so it runs in any
environment; ``packaging`` is used for version comparison when it is importable.

What it checks
    Every distribution installed in the running interpreter's environment (the project itself,
    ``sbir-service``, excepted) is looked up at ``{index}/pypi/{name}/json``, PyPI's project-level
    JSON document. That document names the project's latest release and carries a
    ``vulnerabilities`` list: PyPI's advisories (sourced from OSV: PYSEC-, GHSA- and CVE ids)
    that affect that latest release. Withdrawn advisories are ignored.

What it cannot check
    The project-level document describes the *latest* release only. The per-version documents
    (``/pypi/{name}/{version}/json``, what ``pip-audit`` relies on) and the OSV API are not
    reachable from where this project is built, so an installed version that is not the latest
    release cannot be checked at all. Such a distribution is reported as ``behind`` (or ``ahead``
    for a pre-release or development build newer than the latest release): a warning saying
    exactly that, not a pass and, by default, not a failure either, because there is no data to
    decide on. ``--strict`` makes them failures. Advisories that were never filed with PyPI/OSV
    are, of course, invisible to this check too.

Outcomes per distribution
    ``ok``          installed version is the latest release and the index lists no advisory for it
    ``vulnerable``  installed version is the latest release and has an advisory not in the allowlist
    ``addressed``   every advisory for the installed version is in the allowlist (reason shown)
    ``behind``      installed version is older than the latest release: cannot be checked here
    ``ahead``       installed version is newer than the latest release: cannot be checked here
    ``unknown``     not on the index, or the lookup failed (the reason is given)

Exit status
    0   nothing vulnerable left unaddressed and every lookup succeeded (``behind``/``ahead`` are
        warnings; with ``--strict`` they fail too)
    1   an unaddressed advisory, any failed lookup (an unreachable index fails loudly: the check
        never passes without having looked), or, with ``--strict``, anything unchecked
    2   unusable arguments or allowlist (e.g. an ``[[ignore]]`` entry without a reason)

Allowlist (``audit-allow.toml`` at the repository root; it may be absent)::

    [[ignore]]
    id = "GHSA-wj6h-64fc-37mp"      # an advisory id or any of its aliases (PYSEC-, CVE-, GHSA-)
    package = "ecdsa"
    reason = "why it does not apply to this service"
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

DEFAULT_INDEX_URL = "https://pypi.org"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ALLOWLIST = REPO_ROOT / "audit-allow.toml"
PROJECT_NAME = "sbir-service"

OK = "ok"
VULNERABLE = "vulnerable"
ADDRESSED = "addressed"
BEHIND = "behind"
AHEAD = "ahead"
UNKNOWN = "unknown"
OUTCOMES = (OK, VULNERABLE, ADDRESSED, BEHIND, AHEAD, UNKNOWN)
UNCHECKED = (BEHIND, AHEAD)

UNCHECKED_NOTE = (
    "the index publishes advisories only for the latest release, so this version cannot be checked"
)


class AllowlistError(ValueError):
    """The allowlist file is unreadable or has an invalid entry."""


def normalize(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class AllowEntry:
    id: str
    package: str  # normalised
    reason: str


@dataclass
class Advisory:
    id: str
    aliases: list[str]
    summary: str
    details: str
    fixed_in: list[str]
    link: str
    allowed_reason: str | None = None  # set when an allowlist entry addresses it


@dataclass
class PackageResult:
    name: str
    installed: str
    latest: str | None
    outcome: str
    detail: str
    advisories: list[Advisory] = field(default_factory=list)


@dataclass
class Report:
    index_url: str
    results: list[PackageResult]
    unused_allow: list[AllowEntry] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(OUTCOMES, 0)
        for r in self.results:
            counts[r.outcome] += 1
        return counts

    def exit_code(self, strict: bool = False) -> int:
        failing = {VULNERABLE, UNKNOWN} | (set(UNCHECKED) if strict else set())
        return 1 if any(r.outcome in failing for r in self.results) else 0

    def to_dict(self, strict: bool = False) -> dict[str, Any]:
        return {
            "index_url": self.index_url,
            "strict": strict,
            "exit_code": self.exit_code(strict),
            "counts": self.counts(),
            "note": f"behind/ahead: {UNCHECKED_NOTE}",
            "results": [asdict(r) for r in self.results],
            "unused_allowlist_entries": [asdict(e) for e in self.unused_allow],
        }


# --- inputs --------------------------------------------------------------------------------------


def installed_distributions(skip: Iterable[str] = (PROJECT_NAME,)) -> dict[str, str]:
    """Normalised name -> version for every distribution visible to this interpreter.

    When a name is installed twice (e.g. an editable project's egg-info next to its dist-info)
    the first one on ``sys.path`` wins, as it does for ``importlib.metadata.version``.
    """
    skipped = {normalize(s) for s in skip}
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        raw_name = dist.metadata["Name"] if dist.metadata else None
        if not raw_name:
            continue
        name = normalize(raw_name)
        if name in skipped or name in found:
            continue
        found[name] = dist.version
    return dict(sorted(found.items()))


def load_allowlist(path: Path | None) -> list[AllowEntry]:
    """Read ``[[ignore]]`` entries; a missing file is an empty allowlist."""
    if path is None or not path.exists():
        return []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AllowlistError(f"{path}: cannot read the allowlist: {exc}") from exc
    unknown_tables = set(data) - {"ignore"}
    if unknown_tables:
        raise AllowlistError(f"{path}: unknown top-level keys {sorted(unknown_tables)}; expected [[ignore]]")
    raw = data.get("ignore", [])
    if not isinstance(raw, list):
        raise AllowlistError(f"{path}: 'ignore' must be an array of tables ([[ignore]])")
    entries: list[AllowEntry] = []
    for number, item in enumerate(raw, start=1):
        if not isinstance(item, dict):
            raise AllowlistError(f"{path}: [[ignore]] entry #{number} is not a table")
        label = f"{path}: [[ignore]] entry #{number} (id={item.get('id')!r}, package={item.get('package')!r})"
        extra = set(item) - {"id", "package", "reason"}
        if extra:
            raise AllowlistError(f"{label} has unknown keys {sorted(extra)}")
        for key in ("id", "package", "reason"):
            value = item.get(key)
            if not isinstance(value, str) or not value.strip():
                what = (
                    "has no reason (say why the advisory does not apply)"
                    if key == "reason"
                    else f"has no {key}"
                )
                raise AllowlistError(f"{label} {what}")
        entries.append(
            AllowEntry(
                id=item["id"].strip(), package=normalize(item["package"]), reason=item["reason"].strip()
            )
        )
    return entries


# --- lookups -------------------------------------------------------------------------------------


class LookupFailed(Exception):
    """The index did not give a usable answer for a project."""


def fetch_project(
    index_url: str, name: str, *, timeout: float = 15.0, retries: int = 3, retry_delay: float = 1.0
) -> dict[str, Any]:
    """GET ``{index_url}/pypi/{name}/json``; retries transient failures, never a 404."""
    url = f"{index_url.rstrip('/')}/pypi/{urllib.parse.quote(name)}/json"
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "User-Agent": "sbir-audit-deps"}
    )
    last_error = "no attempt made"
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(retry_delay * 2 ** (attempt - 1))
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise LookupFailed(f"not found on the index ({url} answered 404)") from exc
            last_error = f"HTTP {exc.code} from {url}"
            if exc.code < 500 and exc.code != 429:
                break
            continue
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            last_error = f"cannot reach {url}: {reason}"
            continue
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LookupFailed(f"{url} did not return JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise LookupFailed(f"{url} returned JSON that is not an object")
        return document
    raise LookupFailed(f"{last_error} (gave up after {retries + 1} attempts)")


def _parse_version(text: str) -> Any:
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:  # pragma: no cover - packaging is installed wherever pip is
        return None
    try:
        return Version(text)
    except InvalidVersion:
        return None


def compare_versions(installed: str, latest: str) -> int:
    """-1, 0 or 1 as ``installed`` is older than, the same release as, or newer than ``latest``.

    A local build (``2.9.0+cu128``) counts as its public release. Without ``packaging`` (or with
    a version it cannot parse) only string equality is decided; anything else counts as older.
    """
    a, b = _parse_version(installed), _parse_version(latest)
    if a is None or b is None:
        return 0 if installed == latest else -1
    a_public, b_public = type(a)(a.public), type(b)(b.public)
    return (a_public > b_public) - (a_public < b_public)


def _advisories(document: Mapping[str, Any]) -> list[Advisory]:
    raw = document.get("vulnerabilities")
    if not isinstance(raw, list):
        raise LookupFailed("the index's answer has no 'vulnerabilities' list")
    out: list[Advisory] = []
    for item in raw:
        if not isinstance(item, dict) or not item.get("id"):
            raise LookupFailed(f"malformed vulnerability entry: {item!r}")
        if item.get("withdrawn"):
            continue
        out.append(
            Advisory(
                id=str(item["id"]),
                aliases=[str(a) for a in item.get("aliases") or []],
                summary=str(item.get("summary") or ""),
                details=str(item.get("details") or ""),
                fixed_in=[str(v) for v in item.get("fixed_in") or []],
                link=str(item.get("link") or ""),
            )
        )
    return out


def check_package(
    name: str,
    installed: str,
    index_url: str,
    allow: Sequence[AllowEntry],
    *,
    timeout: float = 15.0,
    retries: int = 3,
    retry_delay: float = 1.0,
) -> PackageResult:
    """Look one distribution up and decide its outcome."""
    try:
        document = fetch_project(index_url, name, timeout=timeout, retries=retries, retry_delay=retry_delay)
        info = document.get("info")
        latest = info.get("version") if isinstance(info, dict) else None
        if not isinstance(latest, str) or not latest:
            raise LookupFailed("the index's answer names no latest version (info.version)")
        advisories = _advisories(document)
    except LookupFailed as exc:
        return PackageResult(name, installed, None, UNKNOWN, str(exc))

    order = compare_versions(installed, latest)
    if order < 0:
        return PackageResult(
            name, installed, latest, BEHIND, f"older than the latest release {latest}: {UNCHECKED_NOTE}"
        )
    if order > 0:
        return PackageResult(
            name, installed, latest, AHEAD, f"newer than the latest release {latest}: {UNCHECKED_NOTE}"
        )
    if not advisories:
        return PackageResult(name, installed, latest, OK, "latest release; no known advisory")

    for advisory in advisories:
        ids = {advisory.id, *advisory.aliases}
        for entry in allow:
            if entry.package == name and entry.id in ids:
                advisory.allowed_reason = entry.reason
                break
    open_ids = [a.id for a in advisories if a.allowed_reason is None]
    if open_ids:
        return PackageResult(
            name,
            installed,
            latest,
            VULNERABLE,
            f"{len(open_ids)} advisory(ies) not addressed: {', '.join(open_ids)}",
            advisories,
        )
    return PackageResult(name, installed, latest, ADDRESSED, "every advisory is allowlisted", advisories)


def audit(
    packages: Mapping[str, str],
    index_url: str = DEFAULT_INDEX_URL,
    allow: Sequence[AllowEntry] = (),
    *,
    timeout: float = 15.0,
    retries: int = 3,
    retry_delay: float = 1.0,
    workers: int = 8,
) -> Report:
    """Audit ``packages`` (name -> installed version) against ``index_url``."""
    normalized = {normalize(n): v for n, v in packages.items()}
    names = sorted(normalized)

    def one(name: str) -> PackageResult:
        return check_package(
            name,
            normalized[name],
            index_url,
            allow,
            timeout=timeout,
            retries=retries,
            retry_delay=retry_delay,
        )

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(one, names))

    def matches(entry: AllowEntry) -> bool:
        return any(
            r.name == entry.package and entry.id in (a.id, *a.aliases) for r in results for a in r.advisories
        )

    unused = [entry for entry in allow if not matches(entry)]
    return Report(index_url=index_url, results=results, unused_allow=unused)


# --- output --------------------------------------------------------------------------------------


def _shorten(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def format_report(report: Report, strict: bool = False) -> str:
    rows = [("PACKAGE", "INSTALLED", "LATEST", "OUTCOME", "DETAIL")]
    order = {VULNERABLE: 0, UNKNOWN: 1, ADDRESSED: 2, BEHIND: 3, AHEAD: 4, OK: 5}
    ordered = sorted(report.results, key=lambda r: (order[r.outcome], r.name))
    for r in ordered:
        rows.append((r.name, r.installed, r.latest or "-", r.outcome, r.detail))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"Dependency audit against {report.index_url} ({len(report.results)} distributions)"]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row[:4])) + "  " + row[4])
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
            continue
        result = ordered[i - 1]
        for adv in result.advisories:
            aliases = f" ({', '.join(adv.aliases)})" if adv.aliases else ""
            fixed = ", ".join(adv.fixed_in) if adv.fixed_in else "no fixed version published"
            status = f"ADDRESSED: {adv.allowed_reason}" if adv.allowed_reason else "NOT ADDRESSED"
            lines.append(f"    - {adv.id}{aliases} [{status}]")
            lines.append(f"      fixed in: {fixed}; {adv.link}")
            lines.append(f"      {_shorten(adv.summary or adv.details)}")
    for entry in report.unused_allow:
        lines.append(
            f"note: allowlist entry {entry.id} for {entry.package} matched no current advisory (stale?)"
        )

    counts = report.counts()
    unknown = [r for r in report.results if r.outcome == UNKNOWN]
    if report.results and len(unknown) == len(report.results):
        lines.append(
            f"ERROR: no lookup succeeded against {report.index_url}; the audit did not run "
            f"(first failure: {unknown[0].detail}). This is a failure, not a pass."
        )
    elif unknown:
        lines.append(f"ERROR: {len(unknown)} lookup(s) failed; their packages were not audited.")
    unchecked = counts[BEHIND] + counts[AHEAD]
    if unchecked:
        verdict = "failures (--strict)" if strict else "warnings"
        lines.append(
            f"WARNING: {unchecked} distribution(s) not at the latest release could not be checked ({verdict}): {UNCHECKED_NOTE}."
        )
    code = report.exit_code(strict)
    summary = ", ".join(f"{counts[o]} {o}" for o in OUTCOMES)
    lines.append(f"audit: {'FAIL' if code else 'PASS'}: {summary}")
    return "\n".join(lines)


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """The report, through the project's one atomic writer (keys in the report's own order)."""
    from models.atomic import write_json_atomic as write

    write(path, dict(payload), sort_keys=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.audit_deps",
        description="Check the installed distributions against the index's vulnerability data "
        "(available for each project's latest release only).",
    )
    parser.add_argument(
        "--index-url", default=DEFAULT_INDEX_URL, help="index serving /pypi/NAME/json (default %(default)s)"
    )
    parser.add_argument(
        "--allow",
        type=Path,
        default=DEFAULT_ALLOWLIST,
        help="allowlist TOML (default: audit-allow.toml at the repository root)",
    )
    parser.add_argument(
        "--json", type=Path, dest="json_path", help="also write the report as JSON to this path (atomically)"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail on distributions that cannot be checked (not at the latest release)",
    )
    parser.add_argument(
        "--timeout", type=float, default=15.0, help="seconds per request (default %(default)s)"
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=3,
        help="retries per package after a transient failure (default %(default)s)",
    )
    parser.add_argument(
        "--retry-delay",
        type=float,
        default=1.0,
        help="first backoff in seconds, doubled each retry (default %(default)s)",
    )
    parser.add_argument("--workers", type=int, default=8, help="parallel requests (default %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None, packages: Mapping[str, str] | None = None) -> int:
    """CLI entry point; ``packages`` replaces the installed set (for tests)."""
    args = build_parser().parse_args(argv)
    try:
        allow = load_allowlist(args.allow)
    except AllowlistError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if packages is None:
        packages = installed_distributions()
    report = audit(
        packages,
        args.index_url,
        allow,
        timeout=args.timeout,
        retries=max(0, args.retries),
        retry_delay=max(0.0, args.retry_delay),
        workers=args.workers,
    )
    print(format_report(report, strict=args.strict))
    if args.json_path is not None:
        write_json_atomic(args.json_path, report.to_dict(strict=args.strict))
        print(f"report written to {args.json_path}")
    return report.exit_code(strict=args.strict)


if __name__ == "__main__":
    sys.exit(main())
