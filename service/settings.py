"""Service settings: one pydantic-settings class read from `SBIR_*` environment variables and,
optionally, a settings file (JSON, or a `.env` file of `SBIR_*` lines).

Precedence, highest first: values passed in code (the CLI's flags), environment variables, the
settings file, the defaults below. Nothing here is built at import: call `load_settings`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, JsonConfigSettingsSource, SettingsConfigDict, SettingsError

from models.errors import SbirError

MIB = 1024 * 1024


# Hard caps of the API, whatever the settings say, and its defaults (service/api/deps.py reads them).
K_LIMIT = 200
SHORTLIST_LIMIT = 2000
DEFAULT_K = 20
DEFAULT_SHORTLIST = 100


class Settings(BaseSettings):
    """Everything the server needs to know; see docs/service.md, for the environment variables."""

    model_config = SettingsConfigDict(env_prefix="SBIR_", extra="forbid", env_file=None)

    # What to serve.
    index_dir: Path | None = Field(None, description="index directory opened at startup (none: 503 until one is built)")
    checkpoint: Path | None = Field(None, description="model checkpoint; required for search and index builds")
    index_root: Path | None = Field(
        None, description="where POST /index/build writes new indexes (default: the parent of index_dir)"
    )
    data_roots: list[Path] = Field(
        default_factory=list, description="folders that gallery/dataset/checkpoint paths in requests must lie under"
    )
    jobs_db: Path | None = Field(
        None, description="SQLite job store (default: <index_root>/jobs.sqlite3, else "
                          "$XDG_STATE_HOME/sbir/jobs.sqlite3, ~/.local/state/sbir/jobs.sqlite3 without it)"
    )

    # Network.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    cors_origins: list[str] = Field(default_factory=list, description="allowed CORS origins; empty turns CORS off")

    # Security: no token means the state-changing endpoints are disabled, never open.
    admin_token: SecretStr | None = None
    admin_token_file: Path | None = Field(None, description="file holding the admin token (one line); "
                                                            "instead of admin_token, which must then be unset")

    # What responses show.
    show_paths: bool = Field(True, description="search results carry each photo's path relative to its gallery root")

    # Limits on what a request may ask for.
    max_upload_bytes: int = Field(10 * MIB, ge=1024)
    max_pixels: int = Field(25_000_000, ge=1, description="width*height above this is refused before decoding")
    k_max: int = Field(K_LIMIT, ge=1, le=K_LIMIT)
    shortlist_max: int = Field(SHORTLIST_LIMIT, ge=1, le=SHORTLIST_LIMIT)
    thumbnail_max: int = Field(1024, ge=16, le=4096, description="largest ?size= for GET /images/{id}")

    # Engine and jobs.
    index_watch_s: float = Field(2.0, ge=0.0, le=3600.0,
                                 description="seconds between checks of the served index's manifest; a republished "
                                             "index (sbir index add, a rebuild) is reopened and swapped in; 0 = off")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # 32: the fastest chunk for zse-tiny in fp32 and ViT-B/16 in bf16 on 2 cores (fast_modes.json).
    rerank_batch_size: int = Field(32, ge=1, le=4096)
    query_cache_size: int = Field(256, ge=1, description="queries kept for /explain (each holds its tokens)")
    max_concurrent_jobs: int = Field(1, ge=1, le=64)

    # Speed (see benchmarks/RESULTS.md for what each is measured to buy).
    autocast: bool = Field(True, description="float16 autocast for sketch embedding and re-ranking on CUDA; "
                                             "no effect on the CPU")
    rerank_mode: str = Field("fp32", description="relation re-ranking: fp32 (exact), bf16, int8, bf16+cascadeM / "
                                                 "int8+cascadeM (the top M rescored exactly), or prescoreM / "
                                                 "bf16+prescoreM (only the pre-scorer's top M relation-scored; needs a "
                                                 "checkpoint with a pre-scorer); speed and agreement of each in "
                                                 "benchmarks/RESULTS.md")
    ann_weight: float = Field(0.0, ge=0.0, le=100.0,
                              description="re-ranked results are ordered by relation + ann_weight x [Ret] cosine; "
                                          "0 = the paper's rule (relation alone); the demo serves with 1 "
                                          "(benchmarks/RESULTS.md, demo model quality)")
    torch_threads: int | None = Field(None, ge=1, le=1024,
                                      description="torch intra-op threads; default: the cores this process may use "
                                                  "(CPU affinity and a cgroup CPU quota both count)")

    @field_validator("index_dir", "checkpoint", "index_root", "jobs_db", "admin_token_file", mode="before")
    @classmethod
    def _empty_path_is_none(cls, value: Any) -> Any:
        # SBIR_INDEX_DIR= (empty) in a container means "none", not the current directory.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("rerank_mode")
    @classmethod
    def _known_rerank_mode(cls, value: str) -> str:
        from models.rerank_mode import RerankMode

        return RerankMode.parse(value).label  # ValueError -> the field's one-line settings error

    @field_validator("admin_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: Any) -> Any:
        # SBIR_ADMIN_TOKEN="" must mean "disabled", not "the empty string is the password".
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return value

    @model_validator(mode="after")
    def _index_needs_checkpoint(self) -> Settings:
        if self.index_dir is not None and self.checkpoint is None:
            raise ValueError("index_dir is set but checkpoint is not: an index is searched with its model")
        return self

    @model_validator(mode="after")
    def _read_admin_token_file(self) -> Settings:
        if self.admin_token_file is None:
            return self
        if self.admin_token is not None:
            raise ValueError("admin_token (SBIR_ADMIN_TOKEN) and admin_token_file (SBIR_ADMIN_TOKEN_FILE) are both "
                             "set: set one of them")
        try:
            token = self.admin_token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            reason = "does not exist" if isinstance(error, FileNotFoundError) else f"cannot be read ({error})"
            raise ValueError(f"admin_token_file (SBIR_ADMIN_TOKEN_FILE): {self.admin_token_file} {reason}") from None
        if not token or "\n" in token:
            raise ValueError(f"admin_token_file (SBIR_ADMIN_TOKEN_FILE): {self.admin_token_file} must hold the "
                             "token on one line")
        self.admin_token = SecretStr(token)
        return self

    def build_root(self) -> Path | None:
        """Folder that new indexes are written into, or None when there is nowhere to put them."""
        if self.index_root is not None:
            return self.index_root
        if self.index_dir is not None:
            return self.index_dir.parent
        return None

    def jobs_db_path(self) -> Path:
        """Where the job store lives: next to the indexes when that is known."""
        if self.jobs_db is not None:
            return self.jobs_db
        root = self.build_root()
        if root is not None:
            return root / "jobs.sqlite3"
        # Never the working directory: the user's state folder (XDG base directories).
        state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(state) / "sbir" / "jobs.sqlite3"

    def describe(self) -> str:
        """One line saying what this server enables and what not, and why (logged at start-up)."""
        if self.admin_token is None:
            admin = "admin endpoints off (no SBIR_ADMIN_TOKEN or SBIR_ADMIN_TOKEN_FILE)"
        elif self.admin_token_file is not None:
            admin = f"admin endpoints on (token from {self.admin_token_file})"
        else:
            admin = "admin endpoints on (token from SBIR_ADMIN_TOKEN)"
        if self.data_roots:
            roots = ", ".join(f"{root}{'' if root.is_dir() else ' (missing)'}" for root in self.data_roots)
            data = f"data roots {roots}"
        else:
            data = "no data roots (request paths are refused; set SBIR_DATA_ROOTS or --data-root)"
        root = self.build_root()
        if root is None:
            built = ("no index root (POST /index/build and /index/activate refused; set SBIR_INDEX_ROOT or "
                     "--index-root)")
        elif self.index_root is None:
            built = f"index root {root} (the parent of the index directory)"
        else:
            built = f"index root {root}"
        return f"{admin}; {data}; {built}; jobs in {self.jobs_db_path()}"


class SettingsFailure(SbirError, ValueError):
    """Settings that cannot be used, in one line naming the setting (its SBIR_* variable)."""


def load_settings(settings_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read settings from the environment and `settings_file`, with `overrides` on top.

    settings_file: `*.json` (an object of field names) or anything else read as a dotenv file of
    `SBIR_*` assignments. Overrides whose value is None are dropped so that an unset CLI flag does
    not hide the environment.
    """
    values = {name: value for name, value in overrides.items() if value is not None}
    try:
        if settings_file is None:
            return Settings(**values)
        path = Path(settings_file)
        if not path.is_file():
            raise FileNotFoundError(f"settings file not found: {path}")
        if path.suffix.lower() == ".json":
            return _with_json_file(path)(**values)
        return Settings(_env_file=path, **values)  # type: ignore[call-arg]  # pydantic-settings init option
    except (ValidationError, SettingsError) as error:
        raise SettingsFailure(describe_settings_error(error)) from None


def describe_settings_error(error: Exception) -> str:
    """A pydantic(-settings) error as one line naming each setting at fault and its variable."""
    if isinstance(error, ValidationError):
        parts = []
        for detail in error.errors():
            name = ".".join(str(part) for part in detail["loc"])
            message = str(detail["msg"]).removeprefix("Value error, ")
            parts.append(f"{name}: {message} (SBIR_{name.upper()})" if name else message)
        return "; ".join(parts)
    # SettingsError: 'error parsing value for field "data_roots" from source "EnvSettingsSource"'
    text = str(error)
    match = re.search(r'field "([a-z_]+)"', text)
    if match is None:
        return text.splitlines()[0]
    name = match.group(1)
    hint = " (a JSON list, e.g. '[\"/srv/data\"]')" if name in _LIST_FIELDS else ""
    return f"{name}: cannot be parsed{hint} (SBIR_{name.upper()})"


_LIST_FIELDS = ("data_roots", "cors_origins")


def _with_json_file(path: Path) -> type[Settings]:
    """A Settings subclass whose sources put the JSON file just below the environment."""

    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        return (init_settings, env_settings, JsonConfigSettingsSource(settings_cls, json_file=path), file_secret_settings)

    return type("Settings", (Settings,), {"settings_customise_sources": classmethod(settings_customise_sources)})
