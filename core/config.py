"""Engine configuration: a typed schema of settings, loaded from `config.toml`, validated, saved atomically."""

from __future__ import annotations

import asyncio
import copy
import difflib
import math
import os
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any, Callable

import tomlkit

from mavail.core.errors import ConfigError
from mavail.core.fsutil import atomic_write_bytes
from mavail.core.metrics.listen import check_listen
from mavail.core.limits import (MAX_DAYS, MAX_DURATION_S, MAX_GB, MAX_RATE_MBPS, MAX_SAFE_INT, MAX_SETTING_FLOAT, MAX_UID,
                                MAX_VRAM_GB, MAX_WAIT_MINUTES)


def parse_bool(text: str) -> bool:
    """A boolean as a person types it (true/false, yes/no, on/off, 1/0, any case); ValueError for anything else."""
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


SHORT_MAX = 28
"""The longest `Setting.short`: it fits a column of its own beside the key and value on an 80-column terminal."""


@dataclass(frozen=True)
class Setting:
    """One configuration key: its type, default, meaning, bounds and whether a change applies at once."""

    key: str  # "section.name"
    type: type
    default: Any
    doc: str
    short: str
    """What the setting is for in a few words (at most SHORT_MAX characters), for a table beside its value."""
    live: bool = True
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], str | None] | None = None  # what is wrong with a value of the right type, or None
    items: type = int  # what a list setting holds: user ids (int) or absolute paths (str)

    def coerce(self, value: Any) -> Any:
        """Return `value` as this setting's type, or raise ConfigError naming the key."""
        t = self.type
        ok: bool
        if t is bool:
            ok = isinstance(value, bool)
        elif t is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif t is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif t is str:
            ok = isinstance(value, str)
        elif t is list and self.items is str:
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif t is list:
            ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        else:  # pragma: no cover - schema bug
            ok = False
        if not ok:
            raise ConfigError(f"{self.key} must be of type {t.__name__}", field=self.key, value=repr(value)[:80])
        if t is float and not math.isfinite(value):
            raise ConfigError(f"{self.key} must be a finite number", field=self.key, value=repr(value))
        if t is list and self.items is str:
            if any(not v or "\x00" in v or len(v) > 4096 or not os.path.isabs(os.path.expanduser(v)) for v in value):
                raise ConfigError(f"{self.key} must hold absolute paths (~ allowed)", field=self.key, value=repr(value)[:80])
            return value
        if t is list:
            if any(not 0 <= v <= MAX_UID for v in value):
                raise ConfigError(f"{self.key} must hold user ids from 0 to {MAX_UID}", field=self.key, value=repr(value)[:80])
            return value
        if t in (int, float):
            # a setting without bounds of its own still gets finite ones: the values end up in dates, sleeps and JSON
            ceiling = self.max if self.max is not None else (MAX_SAFE_INT if t is int else MAX_SETTING_FLOAT)
            floor = self.min if self.min is not None else -ceiling
            if value < floor:
                raise ConfigError(f"{self.key} must be at least {floor}", field=self.key, value=value)
            if value > ceiling:
                raise ConfigError(f"{self.key} must be at most {ceiling}", field=self.key, value=value)
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{self.key} must be one of {', '.join(self.choices)}", field=self.key, value=value)
        problem = self.check(value) if self.check is not None else None
        if problem:
            raise ConfigError(f"{self.key} {problem}", field=self.key, value=repr(value)[:80])
        return value

    def parse_env(self, text: str) -> Any:
        """Parse an environment override (`MAVAIL_<SECTION>_<KEY>`) into this setting's type."""
        try:
            if self.type is bool:
                return parse_bool(text)
            if self.type is int:
                return int(text)
            if self.type is float:
                return float(text)
            if self.type is list and self.items is str:
                return [v for v in text.split(os.pathsep) if v]
            if self.type is list:
                return [int(v) for v in text.replace(",", " ").split()]
            return text
        except ValueError:
            raise ConfigError(f"{self.key}: cannot read {text!r} from the environment", field=self.key) from None


def _proxy_problem(value: str) -> str | None:
    """What is wrong with a `downloads.proxy` value ("" and "direct" are fine), or None."""
    if value in ("", "direct"):
        return None
    parts = urlsplit(value)
    try:
        parts.port
    except ValueError:
        return "has a port that is not a number"
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
        return 'must be "", "direct" or an http:// proxy URL such as http://proxy.example:3128 (HTTPS goes through it)'
    return None


def _s(key: str, t: type, default: Any, short: str, doc: str, **kw: Any) -> Setting:
    return Setting(key, t, default, doc, short, **kw)


SCHEMA: tuple[Setting, ...] = (
    # downloads
    _s("downloads.max_concurrent", int, 3, "downloads at once", "Downloads running at once.", min=1, max=64),
    _s("downloads.bandwidth_limit_mbps", float, 0.0, "global cap MiB/s, 0 = none",
       "Global cap in MiB/s; 0 = none.", min=0, max=MAX_RATE_MBPS),
    _s("downloads.max_retries", int, 3, "retries per file", "Default retries per file.", min=0, max=100),
    _s("downloads.stall_timeout_s", float, 30.0, "no bytes N s: reconnect",
       "No bytes for this long: reconnect.", min=0.1, max=3600),
    _s("downloads.parallel_ranges", int, 16, "most connections per file",
       "Most connections per large file: a file starts with 2, opens more while they raise "
       "its rate (a server that caps each connection), up to this many, and fewer again while fewer keep it.", min=1, max=64),
    _s("downloads.max_connections", int, 16, "connections of all downloads",
       "Connections of all downloads together: when several download at once, each file "
       "opens its share of these (at least 1, at most parallel_ranges).", min=1, max=256),
    _s("downloads.parallel_min_size_mb", float, 64.0, "parallel ranges from N MiB",
       "Files at least this large use parallel ranges.", min=0),
    _s("downloads.piece_size_mb", int, 8, "piece size MiB (hash unit)",
       "Size of a piece: the unit of progress, hashing and repair.", live=False, min=1, max=1024),
    _s("downloads.retry_base_s", float, 1.0, "first retry delay s, doubles",
       "First retry delay; doubles each retry, with jitter.", min=0, max=600),
    _s("downloads.retry_max_s", float, 60.0, "longest retry delay s", "Longest retry delay.", min=0, max=3600),
    _s("downloads.connect_timeout_s", float, 15.0, "TCP connect timeout s", "TCP connect timeout.", min=0.1, max=600),
    _s("downloads.receive_window_mb", float, 16.0, "MiB in flight per file",
       "Bytes in flight a file's connections may hold together (their socket "
       "receive buffers, split between them): what a kill -9 can lose, and what one file moves per round trip (16 MiB "
       "per 100 ms = 160 MiB/s); 0 leaves it to the kernel.", min=0, max=1024),
    _s("downloads.proxy", str, "", "proxy URL; empty = env vars",
       "Proxy for downloads (http://[user:pass@]host:port), \"direct\" for none; empty: "
       "https_proxy/http_proxy/all_proxy/no_proxy from the environment, as curl reads them.",
       check=_proxy_problem),
    _s("downloads.during_generation", str, "continue", "downloads while generating",
       "What downloads do while any model is leased (a generation runs): continue; "
       "pause (held queued, a running one stops keeping its bytes; they go on when the last lease ends); "
       "throttle (all together at downloads.during_generation_mbps).", choices=("continue", "pause", "throttle")),
    _s("downloads.during_generation_mbps", float, 10.0, "MiB/s cap while generating",
       "The cap of every download together while a lease is held, MiB/s, "
       "with downloads.during_generation = throttle.", min=0.01, max=MAX_RATE_MBPS),
    _s("downloads.auto_download_on_request", bool, True, "requests start downloads",
       "models.request starts or joins the download of a model that is "
       "not here; off: it answers without downloading (downloads.start or mavail pull fetch it)."),
    _s("downloads.min_rate_bytes_per_s", float, 1024.0, "slow connection B/s, 0 = off",
       "A connection slower than this over downloads.min_rate_window_s "
       "(not counting waits for our own bandwidth limits) is replaced; 0 = never.", min=0),
    _s("downloads.min_rate_window_s", float, 60.0, "slow-rate window, seconds",
       "The window over which downloads.min_rate_bytes_per_s is measured, seconds.",
       min=0.1, max=3600),
    _s("downloads.min_rate_replacements", int, 3, "slow swaps before next URL",
       "Slow connections to one URL of a file before that URL is given up on "
       "(the next mirror is tried, else the download fails).", min=1, max=100),
    # gpu
    _s("gpu.vram_gb", float, 0.0, "VRAM to assume without NVML",
       "VRAM to assume when NVML sees no GPU; 0 = unknown.", min=0, max=MAX_VRAM_GB),
    # fallback: the scoring formula's weights (normalised by their sum) and strategy thresholds
    _s("fallback.weight_capabilities", float, 0.30, "weight: capability coverage",
       "Weight of capability coverage in compatibility_score.", min=0, max=10),
    _s("fallback.weight_model_type", float, 0.10, "weight: model type match", "Weight of the model type match.", min=0, max=10),
    _s("fallback.weight_quality", float, 0.15, "weight: quality tier",
       "Weight of the quality tier against the wanted one.", min=0, max=10),
    _s("fallback.weight_speed", float, 0.05, "weight: speed tier",
       "Weight of the speed tier against the wanted one.", min=0, max=10),
    _s("fallback.weight_vram", float, 0.15, "weight: VRAM fit",
       "Weight of the VRAM fit at the requested resolution.", min=0, max=10),
    _s("fallback.weight_family", float, 0.05, "weight: same model family",
       "Weight of being in the requested model's family.", min=0, max=10),
    _s("fallback.weight_availability", float, 0.20, "weight: availability",
       "Weight of availability (ready, downloading with an ETA, missing).", min=0, max=10),
    _s("fallback.weight_size", float, 0.05, "weight: size (prefer small)",
       "Weight of size, used only with user_preferences.prefer_smaller_models.", min=0, max=10),
    _s("fallback.vram_reduce_factor", float, 0.6, "VRAM score, smaller res",
       "VRAM sub-score scale when only a smaller resolution fits.", min=0, max=1),
    _s("fallback.availability_downloading", float, 0.7, "score while downloading",
       "Availability sub-score of a download that ends now; falls to 0 at max wait.", min=0, max=1),
    _s("fallback.min_score", float, 0.2, "least score suggested",
       "Candidates scoring under this are not suggested.", min=0, max=1),
    _s("fallback.max_suggestions", int, 5, "most suggestions returned", "Suggestions returned at most.", min=1, max=100),
    _s("fallback.alternative_min_score", float, 0.7, "score to use an alternative",
       "A ready alternative this good gives the alternative_model strategy.", min=0, max=1),
    _s("fallback.hybrid_min_score", float, 0.45, "score to use one meanwhile",
       "A ready alternative this good is worth using while the requested model downloads.", min=0, max=1),
    _s("fallback.hybrid_min_wait_s", float, 120.0, "shorter waits just wait, s",
       "Shorter waits than this are simply waited for (queue_and_wait).", min=0, max=MAX_DURATION_S),
    _s("fallback.default_max_wait_minutes", float, 30.0, "default max wait, minutes",
       "max_wait_time_minutes when a request gives none.", min=0, max=MAX_WAIT_MINUTES),
    _s("fallback.queue_max_wait_minutes", float, 60.0, "queued request expiry, min",
       "Expiry of a queued request that gives no max_wait_time_minutes.", min=0.001, max=MAX_WAIT_MINUTES),
    _s("fallback.suggestion_timeout_s", float, 30.0, "suggestion timeout, seconds",
       "timeout_seconds of fallback_suggestion events.", min=0, max=MAX_DURATION_S),
    _s("fallback.vram_headroom_gb", float, 0.0, "VRAM kept free, GiB",
       "VRAM kept free: subtracted from the free VRAM before fitting.", min=0, max=MAX_VRAM_GB),
    _s("fallback.repair_wait_s", float, 2.0, "wait for a repair, seconds",
       "models.request waits this long for a repair it starts before answering.", min=0, max=600),
    _s("fallback.vram_cache_s", float, 2.0, "free-VRAM reading reused, s",
       "How long a free-VRAM reading is reused.", min=0, max=3600),
    _s("fallback.enabled", bool, True, "suggest ready alternatives",
       "Suggest ready alternatives (models.request, fallback.suggest, fallback_suggestion events); "
       "off: only the requested model is considered and no fallback_suggestion is sent."),
    # health
    _s("health.monitoring_enabled", bool, True, "run scheduled checks",
       "Scheduled checks (quick every check_interval_hours, full every "
       "full_check_interval_days, with auto repair); off: models are checked only when asked."),
    _s("health.check_interval_hours", float, 24.0, "quick check every N hours",
       "Quick check of every model.", min=0.01, max=MAX_DAYS * 24),
    _s("health.full_check_interval_days", float, 7.0, "full check every N days",
       "Full check of every model.", min=0.01, max=MAX_DAYS),
    _s("health.max_read_mbps", float, 200.0, "read budget of checks MiB/s",
       "Read budget of scheduled checks, MiB/s; 0 = none.", min=0, max=MAX_RATE_MBPS),
    _s("health.auto_repair_enabled", bool, True, "repair what checks find", "Repair what scheduled checks find."),
    _s("health.scheduler_tick_s", float, 60.0, "look for due checks every s",
       "How often the scheduler looks for due checks, seconds.", min=0.05, max=86400),
    _s("health.auto_repair_backoff_minutes", float, 30.0, "failed repair retry, minutes",
       "Wait after a failed automatic repair before trying again.", min=0, max=MAX_DAYS * 1440),
    _s("health.performance_degraded_ratio", float, 1.5, "slowdown that is degraded",
       "Recent/baseline generation time at which performance is degraded.", min=1.0, max=100),
    _s("health.performance_critical_ratio", float, 3.0, "slowdown that scores 0",
       "Recent/baseline generation time at which the speed part of performance_score is 0.", min=1.01, max=1000),
    _s("health.performance_min_success_rate", float, 0.8, "least healthy success rate",
       "Recent success rate under which performance is degraded.", min=0, max=1),
    _s("health.performance_min_samples", int, 5, "successes before a score",
       "Successful generations needed before performance_score is known.", min=1, max=10000),
    # shared model store
    _s("store.shared", bool, False, "models/ shared by engines",
       "models/ is shared with other engines (one per node, each with its own home): a lock per "
       "model version on the store lets one engine download while the others wait and adopt the verified files; partial "
       "data and its piece journal live on the store, so another engine continues a download whose engine died; leases are "
       "recorded there, and cleanup, removals and pruning spare models other engines use.", live=False),
    _s("store.lock_stale_s", float, 30.0, "lock or lease stale after s",
       "A lock holder or a lease whose engine has not refreshed it for this long (engines "
       "on other hosts; on this host a dead process counts at once) is taken over or ignored; heartbeats every third of it.",
       min=0.3, max=3600),
    _s("store.poll_s", float, 0.25, "look at the store every N s",
       "How often an engine waiting for another engine's download looks at the store.", min=0.05, max=60),
    # storage
    _s("storage.max_gb", float, 0.0, "models ceiling GiB, 0 = none", "Ceiling for models, GiB; 0 = none.", min=0, max=MAX_GB),
    _s("storage.min_free_gb", float, 5.0, "free-space floor GiB",
       "Free-space floor for warnings and refusals, GiB.", min=0, max=MAX_GB),
    _s("storage.keep_used_within_days", float, 30.0, "keep used in last N days",
       "Retention: cleanup keeps models used (generated with or requested) in the last N days, "
       "counting from installation for a model never used.", min=0, max=MAX_DAYS),
    _s("storage.keep_used_more_than", int, 10, "keep used more than N times",
       "Retention: cleanup keeps models used more than N times in the last "
       "storage.frequent_window_days days (when preserve_frequently_used).", min=0),
    _s("storage.frequent_window_days", float, 90.0, "days uses are counted over",
       "The window over which storage.keep_used_more_than counts uses.", min=1, max=MAX_DAYS),
    _s("storage.hot_days", float, 7.0, "hot: used in last N days",
       "Tier: hot = used in the last N days or in use now; never evicted for the ceiling or floor.", min=0, max=MAX_DAYS),
    _s("storage.warm_days", float, 30.0, "warm: used in last N days",
       "Tier: warm = used in the last N days (and not hot); cold = the rest.", min=0, max=MAX_DAYS),
    _s("storage.partial_max_age_days", float, 7.0, "stale partial data, days",
       "Partial download data untouched this long, with no download "
       "owning it, is offered for cleanup.", min=0, max=MAX_DAYS),
    _s("storage.ceiling_warn_percent", float, 90.0, "warn at this % of ceiling",
       "storage_warning when the models use this share of storage.max_gb.", min=1, max=100),
    _s("storage.check_interval_s", float, 300.0, "space check every N s",
       "How often free space and the ceiling are checked for storage_warning.", min=1, max=MAX_DURATION_S),
    # analytics
    _s("analytics.enabled", bool, True, "record use of each model",
       "Store usage: generations recorded with analytics.record and models.request counts; "
       "off: events are still validated, then dropped, and nothing of them is kept."),
    _s("analytics.flush_interval_ms", float, 5.0, "save uses to disk every N ms",
       "Recorded events are written to the database in one transaction at most this often.", min=0, max=10000),
    _s("analytics.max_buffered_events", int, 50000, "uses held before saving",
       "Events held in memory before analytics.record waits for a write.", min=100),
    _s("analytics.frequency_window_days", int, 30, "use frequency over N days",
       "usage_frequency is uses per day over this many days.", min=1, max=3650),
    _s("analytics.trend_threshold", float, 0.05, "score change that is a trend",
       "performance trend: improving/degrading when the current (24-hour) score is this "
       "much above/below the mean of the 7- and 30-day scores, else stable.", min=0, max=1),
    _s("analytics.trend_min_events", int, 5, "runs needed to judge a trend",
       "Generations needed in the current window and in 30 days to judge a trend.", min=1),
    _s("analytics.preload_window_days", float, 14.0, "preload looks back N days",
       "analytics.preload looks at uses and requests in this many days.", min=1, max=MAX_DAYS),
    _s("analytics.preload_min_uses", int, 3, "uses that earn a preload",
       "Uses plus requests in the window that make a model worth preloading.", min=1),
    # sources
    _s("sources.local_dirs", list, [], "folders of files to reuse",
       "Folders of model files to reuse before downloading (a ComfyUI models/ tree, say): a file of "
       "the right size whose sha256 matches is linked or copied, never changed.", items=str),
    # updates
    _s("updates.keep_versions", int, 1, "previous versions kept", "Previous versions kept after an update.", min=0, max=20),
    # events
    _s("events.notification_level", str, "all", "events subscribers get",
       "Which events subscribers get: all; changes (all but model_download_progress); "
       "alerts (download_failed, model_health_alert, storage_warning, queued_request_expired); none.",
       choices=("all", "changes", "alerts", "none")),
    # rpc
    _s("rpc.token", str, "", "token clients must present", "Required in session.hello when set.", live=False),
    _s("rpc.allowed_uids", list, [], "more uids allowed to connect", "Further peer uids allowed.", live=False),
    _s("rpc.max_message_bytes", int, 1048576, "longest request line, bytes",
       "Longest request line in bytes.", min=1024, max=64 * 1048576),
    _s("rpc.rate_limit_per_second", float, 0.0, "calls/s per client, 0 = off",
       "Calls per second per connection; 0 = off.", min=0, max=1e6),
    # metrics
    _s("metrics.listen", str, "", "Prometheus HOST:PORT",
       "HOST:PORT where Prometheus metrics are served at /metrics, like 127.0.0.1:9464; empty = off. "
       "A non-loopback address needs metrics.allow_remote.", live=False),
    _s("metrics.allow_remote", bool, False, "allow non-loopback metrics",
       "Allow metrics.listen on an address other hosts can reach (the figures carry "
       "model ids and sizes: keep it behind a firewall).", live=False),
    _s("metrics.per_model_max", int, 50, "per-model series to N models",
       "Metrics carry a model_id label only while the catalog has at most this many "
       "models (0 = never); above it only totals are served, so the series stay few.", min=0, max=100000),
)


def check_together(values: dict[str, Any]) -> None:
    """Rules that span settings (ConfigError): metrics.listen must be loopback unless metrics.allow_remote."""
    if "metrics.listen" in values and "metrics.allow_remote" in values:
        check_listen(values["metrics.listen"], values["metrics.allow_remote"])



def edited_toml(text: str, values: dict[str, Any]) -> str:
    """`text` (a config.toml) with each `section.key` of `values` set, keeping its comments, order and layout."""
    doc = tomlkit.parse(text)
    for key, value in values.items():
        section, name = key.split(".", 1)
        table = doc.get(section)
        if table is None:
            table = tomlkit.table()
            doc[section] = table
        table[name] = value
    return tomlkit.dumps(doc)


def commented_defaults(schema: dict[str, "Setting"]) -> str:
    """A config.toml that sets nothing: every key commented out at its default, under its description and bounds.

    Written into a new home, so a user sees every setting where they would change it.
    """
    lines = ["# mavail's settings. Every key is shown at its default, commented out: remove the '#' to change one.",
             "# `mavail call config.update '{\"patch\": {\"section.key\": value}}'` sets one and keeps this file's comments;",
             "# MAVAIL_<SECTION>_<KEY> in the environment overrides a key for one run.", ""]
    section = None
    for key in sorted(schema):
        setting = schema[key]
        sec, name = key.split(".", 1)
        if sec != section:
            if section is not None:
                lines.append("")
            lines.append(f"[{sec}]")
            section = sec
        bounds = []
        if setting.min is not None:
            bounds.append(f"at least {setting.min:g}")
        if setting.max is not None:
            bounds.append(f"at most {setting.max:g}")
        if setting.choices:
            bounds.append("one of " + ", ".join(setting.choices))
        if not setting.live:
            bounds.append("applies after a restart")
        lines.append(f"# {setting.doc}" + (f" ({'; '.join(bounds)})" if bounds else ""))
        lines.append("# " + tomlkit.dumps({name: setting.default}).strip())
    return "\n".join(lines) + "\n"


def flatten_patch(patch: Any) -> dict[str, Any]:
    """A config patch given as `{section: {key: value}}` or `{"section.key": value}` as `{"section.key": value}`."""
    if not isinstance(patch, dict):
        raise ConfigError("patch must be an object", field="patch")
    flat: dict[str, Any] = {}
    for top, value in patch.items():
        if isinstance(value, dict):
            for name, inner in value.items():
                flat[f"{top}.{name}"] = inner
        else:
            flat[top] = value
    return flat

class Config:
    """The live configuration: validated values, atomic saves, environment overrides, change callbacks.

    Values are read with `get("section.key")` at the moment they are needed, so a
    live setting changed through `update` applies at once everywhere.
    """

    def __init__(self, path: Path | None, schema: tuple[Setting, ...] = SCHEMA, environ: dict[str, str] | None = None) -> None:
        self.path = path
        self.schema = {s.key: s for s in schema}
        self._environ = dict(os.environ if environ is None else environ)
        self._lock = threading.Lock()
        self._async_lock: asyncio.Lock | None = None
        self._file_values: dict[str, Any] = {}
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._values = {k: copy.deepcopy(s.default) for k, s in self.schema.items()}
        self.env_overrides: dict[str, Any] = {}

    @classmethod
    def load(cls, path: Path | None, environ: dict[str, str] | None = None) -> "Config":
        """Read `path` (missing = defaults), apply environment overrides, validate everything."""
        cfg = cls(path, environ=environ)
        if path is not None and path.exists():
            try:
                raw = tomllib.loads(path.read_text(encoding="utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{path}: {exc}", field=str(path)) from None
            cfg._file_values = cfg._validate_nested(raw, source=str(path))
        cfg._values.update(copy.deepcopy(cfg._file_values))
        for key, setting in cfg.schema.items():
            env_name = "MAVAIL_" + key.replace(".", "_").upper()
            if env_name in cfg._environ:
                value = setting.coerce(setting.parse_env(cfg._environ[env_name]))
                cfg._values[key] = value
                cfg.env_overrides[key] = value
        check_together(cfg._values)
        return cfg

    def _validate_nested(self, raw: dict[str, Any], source: str) -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for section, body in raw.items():
            if not isinstance(body, dict):
                raise ConfigError(f"{source}: [{section}] must be a table", field=section)
            for name, value in body.items():
                key = f"{section}.{name}"
                setting = self.schema.get(key)
                if setting is None:
                    raise self.unknown(key, f"{source}: ")
                flat[key] = setting.coerce(value)
        return flat

    def unknown(self, key: str, where: str = "") -> ConfigError:
        """The error for a key the schema does not have, naming the key it most likely meant."""
        guess = difflib.get_close_matches(key, self.schema, n=1, cutoff=0.6)
        if not guess:  # the same name in another section, say
            name = key.rsplit(".", 1)[-1]
            guess = difflib.get_close_matches(name, {k.split(".", 1)[1]: k for k in self.schema}, n=1, cutoff=0.7)
            guess = [next(k for k in self.schema if k.split(".", 1)[1] == guess[0])] if guess else []
        if guess:
            return ConfigError(f"{where}unknown setting {key}: did you mean {guess[0]}?", field=key, did_you_mean=guess[0])
        return ConfigError(f"{where}unknown setting {key}", field=key)

    def describe(self) -> dict[str, dict[str, Any]]:
        """Every setting by dotted key: its type, default, current value, description, short meaning, bounds, whether it
        applies live."""
        out: dict[str, dict[str, Any]] = {}
        for key, s in sorted(self.schema.items()):
            d: dict[str, Any] = {"type": s.type.__name__, "default": copy.deepcopy(s.default), "value": copy.deepcopy(self._values[key]),
                                 "description": s.doc, "short": s.short}
            if s.min is not None:
                d["min"] = s.min
            if s.max is not None:
                d["max"] = s.max
            if s.choices:
                d["choices"] = list(s.choices)
            d["live"] = s.live
            d["from_environment"] = key in self.env_overrides
            out[key] = d
        return out

    def get(self, key: str) -> Any:
        """The current value of `section.key`."""
        return self._values[key]

    def as_nested(self) -> dict[str, dict[str, Any]]:
        """Every setting as `{section: {key: value}}`, the shape of `config.toml`."""
        out: dict[str, dict[str, Any]] = {}
        for key, value in self._values.items():
            section, name = key.split(".", 1)
            out.setdefault(section, {})[name] = copy.deepcopy(value)
        return out

    def on_change(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """Call `callback(changed)` with `{key: new_value}` after every successful update."""
        self._listeners.append(callback)

    def _check(self, patch: dict[str, Any]) -> dict[str, Any]:
        flat = flatten_patch(patch)
        checked: dict[str, Any] = {}
        for key, value in flat.items():
            setting = self.schema.get(key)
            if setting is None:
                raise self.unknown(key)
            checked[key] = setting.coerce(value)
        check_together({**self._values, **checked})
        return checked

    def _save(self, checked: dict[str, Any]) -> None:
        """Write the file with `checked` merged in (blocking); nothing is written when the file would not change."""
        with self._lock:
            new_file = {**self._file_values, **checked}
            if new_file == self._file_values:
                return
            if self.path is not None:
                atomic_write_bytes(self.path, edited_toml(self._read_text(), checked).encode("utf-8"))
            self._file_values = new_file

    def _read_text(self) -> str:
        assert self.path is not None
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ""

    def _apply(self, checked: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        with self._lock:
            changed = {k: v for k, v in checked.items() if self._values.get(k) != v}
            self._values.update(checked)
        restart = any(not self.schema[k].live for k in changed)
        for cb in list(self._listeners):
            cb(changed)
        return changed, restart

    def update(self, patch: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Validate and apply a nested or dotted patch, save the file atomically (blocking).

        Returns `(changed, restart_required)`. Nothing is applied or written when
        any value is invalid; the file is not rewritten when nothing in it changes.
        """
        checked = self._check(patch)
        self._save(checked)
        return self._apply(checked)

    async def update_async(self, patch: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """`update` for the event loop: the file is written in a worker thread, listeners run on the loop."""
        checked = self._check(patch)
        if self._async_lock is None:
            self._async_lock = asyncio.Lock()
        async with self._async_lock:  # updates apply in the order their files were written
            await asyncio.to_thread(self._save, checked)
            return self._apply(checked)
