"""Every user action of the TUI: one table (key, binding id, description) used by bindings, help and palette."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from textual.binding import Binding

from mavail.rpc.client import CallTimeout, EngineUnavailable, RpcError
from mavail.tui import format as fmt
from mavail.tui.client import error_text
from mavail.tui.screens.confirm import ConfirmScreen
from mavail.tui.words import plural, readable

if TYPE_CHECKING:
    from mavail.tui.app import MavailApp
    from mavail.tui.widgets.base import Pane

PRIORITY_STEPS = ("low", "normal", "high", "critical")  # what + and - step through, least urgent first
TABS = ("models", "downloads", "health", "queue", "storage", "usage", "system", "settings", "history")


@dataclass(frozen=True)
class Target:
    """What an action acts on: the selected model, its row key, and the link to the engine that owns the row."""

    model_id: str
    key: str
    link: Any


@dataclass(frozen=True)
class ActionSpec:
    """One action: binding id (what a keymap remaps), default key, action string, footer label, description."""

    id: str
    key: str
    action: str
    label: str
    description: str
    show: bool = True
    key_display: str | None = None

    def binding(self) -> Binding:
        """The Textual binding for this action."""
        return Binding(self.key, self.action, self.label, show=self.show, key_display=self.key_display, id=self.id)


ACTIONS: tuple[ActionSpec, ...] = (
    ActionSpec("mavail.pause", "p", "pause", "Pause", "Pause the selected download, keeping its partial data"),
    ActionSpec("mavail.resume", "r", "resume", "Resume", "Resume the selected paused or failed download"),
    ActionSpec("mavail.cancel", "c", "cancel", "Cancel", "Cancel the selected download or queued request; asks first"),
    ActionSpec("mavail.priority_up", "plus", "priority(1)", "Prio+", "Raise the selected download's priority", key_display="+", show=False),
    ActionSpec("mavail.priority_down", "minus", "priority(-1)", "Prio-", "Lower the selected download's priority", key_display="-", show=False),
    ActionSpec("mavail.request", "enter", "request", "Get", "Download or request the selected model", show=False),
    ActionSpec("mavail.check", "h", "check", "Check", "Run a full health check of the selected model"),
    ActionSpec("mavail.repair", "R", "repair", "Repair", "Repair the selected model (re-downloads bad pieces); asks first", show=False),
    ActionSpec("mavail.cleanup", "x", "cleanup", "Clean", "Plan a storage cleanup (dry run), then ask before deleting"),
    ActionSpec("mavail.update", "u", "update", "Update", "Update the selected model to the catalog's version; asks first", show=False),
    ActionSpec("mavail.remove", "D", "remove", "Remove", "Remove the selected model's files (refused while in use); asks first", show=False),
    ActionSpec("mavail.filter", "slash", "filter", "Filter", "Filter the table by model id", key_display="/"),
    ActionSpec("mavail.sort", "s", "sort", "Sort", "Sort the table by the next column", show=False),
    ActionSpec("mavail.help", "question_mark", "help", "Help", "Show every key and how to remap them", key_display="?"),
    ActionSpec("mavail.quit", "q", "quit", "Quit", "Quit the TUI (the engine keeps running)"),
    ActionSpec("mavail.theme", "t", "toggle_theme", "Theme", "Switch between the dark and the light theme", show=False),
    ActionSpec("mavail.refresh", "f5", "refresh", "Refresh", "Fetch the current tab again now", show=False),
    ActionSpec("mavail.reconnect", "ctrl+r", "reconnect", "Reconnect", "Try to reach the engine now", show=False),
) + tuple(
    ActionSpec(f"mavail.tab.{name}", str(i), f"tab('{name}')", name.title(), f"Show the {name.title()} tab", show=False)
    for i, name in enumerate(TABS, 1)
)


TAB_KEYS: dict[str, tuple[str, ...]] = {
    "models": ("mavail.request", "mavail.check", "mavail.update", "mavail.remove", "mavail.filter", "mavail.sort"),
    "downloads": ("mavail.pause", "mavail.resume", "mavail.cancel", "mavail.priority_up", "mavail.priority_down",
                  "mavail.filter", "mavail.sort"),
    "health": ("mavail.check", "mavail.repair", "mavail.filter", "mavail.sort"),
    "queue": ("mavail.cancel", "mavail.filter", "mavail.sort"),
    "storage": ("mavail.cleanup", "mavail.remove", "mavail.filter", "mavail.sort"),
    "usage": ("mavail.filter", "mavail.sort"),
    "system": ("mavail.refresh", "mavail.theme"),
    "settings": ("mavail.edit", "mavail.filter"),
    "history": ("mavail.filter", "mavail.sort", "mavail.refresh"),
}
"""The keys each tab's footer shows (every key works on every tab; the footer lists the ones that act there)."""
FOOTER_ALWAYS = ("mavail.help", "mavail.quit")
FOOTER_LABEL = {"mavail.request": "Get", "mavail.priority_up": "Prio+", "mavail.priority_down": "Prio-", "mavail.edit": "Edit",
                "mavail.remove": "Remove"}


def footer_keys(tab: str, overrides: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(key, label) pairs of tab `tab`'s footer, with the user's remapped keys."""
    keys = shown_keys(overrides)
    by_id = {a.id: a for a in ACTIONS}
    out = []
    for aid in TAB_KEYS.get(tab, ()) + FOOTER_ALWAYS:
        if aid == "mavail.edit":
            out.append(("enter", "Edit"))
            continue
        if aid == "mavail.priority_down" and out and out[-1][1] == "Prio+":
            out[-1] = (f"{out[-1][0]}/{keys[aid]}", "Priority")
            continue
        out.append((keys[aid], FOOTER_LABEL.get(aid, by_id[aid].label)))
    return out


def shown_keys(overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The key each binding id answers to, as shown to the user (remapped keys included)."""
    overrides = overrides or {}
    return {a.id: overrides.get(a.id) or a.key_display or a.key for a in ACTIONS}


class ScreenActions:
    """The `action_*` methods of the main screen (mixed into MainScreen)."""

    app: "MavailApp"

    def active_pane(self) -> "Pane":  # provided by MainScreen
        raise NotImplementedError

    def active_name(self) -> str:  # provided by MainScreen
        raise NotImplementedError

    def show_view(self, name: str) -> None:  # provided by MainScreen
        raise NotImplementedError

    # --- helpers -------------------------------------------------------------
    def _target(self) -> Target | None:
        pane = self.active_pane()
        mid = pane.selected_model()
        if mid is None:
            self.app.notify("Select a model first (arrows move, 1-9 switch tabs).", severity="warning")
            return None
        key = pane.table.selected_key if pane.table is not None else None
        return Target(mid, key or mid, self._link())

    def _link(self) -> Any:
        """The engine an action goes to: the one owning the selected row (the first engine on a tab that shows one)."""
        pane = self.active_pane()
        fleet = self.app.fleet
        if not pane.FLEET or pane.table is None:
            return self.app.link
        return fleet.slots[fleet.owner(pane.table.selected_key)].link

    def _offered(self, link: Any, *methods: str) -> bool:
        missing = [m for m in methods if m not in link.methods]
        if not link.connected:
            fleet = self.app.fleet
            who = next((fleet.display(i) for i, s in enumerate(fleet.slots) if s.link is link), "") if fleet.multi else ""
            self.app.report_error(f"DISCONNECTED: {who or 'the engine'} cannot be reached; retrying")
            return False
        if missing:
            self.app.notify(f"This engine does not offer that ({', '.join(missing)})", severity="warning")
            return False
        return True

    async def _call(self, link: Any, method: str, timeout: float | None = None, **params: Any) -> Any:
        """One call to `link`'s engine; an engine error is shown with its contract message and None returned."""
        if isinstance(params.get("model_id"), str):
            self.app.board.begin(params["model_id"])
        try:
            return await link.call(method, _timeout=timeout, **params)
        except (RpcError, CallTimeout, EngineUnavailable) as exc:
            self.app.report_error(error_text(exc), params.get("model_id"))
            return None

    def _run(self, coro: Any) -> None:
        self.app.run_worker(coro, group="actions", exit_on_error=False)

    def _after(self, *panes: str) -> None:
        for name in panes:
            self.app.pane(name).mark_dirty()

    # --- downloads -----------------------------------------------------------
    def action_pause(self) -> None:
        if (t := self._target()) and self._offered(t.link, "downloads.pause"):
            self._run(self._simple(t, "downloads.pause", "paused"))

    def action_resume(self) -> None:
        if (t := self._target()) and self._offered(t.link, "downloads.resume"):
            self._run(self._simple(t, "downloads.resume", "resumed"))

    async def _simple(self, t: Target, method: str, verb: str, **params: Any) -> None:
        mid = t.model_id
        res = await self._call(t.link, method, model_id=mid, **params)
        if res is not None:
            self.app.notify(f"{mid}: {verb}", model_id=mid)
            self._after("downloads", "models")

    def action_cancel(self) -> None:
        pane = self.active_pane()
        if pane.TITLE == "Queue":
            qid = pane.table.selected_key if pane.table is not None else None
            if qid and self._offered(self.app.link, "fallback.queue_cancel"):
                self._run(self._cancel_queued(qid))
            return
        if (t := self._target()) and self._offered(t.link, "downloads.cancel"):
            self._run(self._cancel_download(t))

    async def _cancel_download(self, t: Target) -> None:
        ok = await self.app.push_screen_wait(ConfirmScreen(
            f"Cancel the download of {self._named(t)}?", "Its partial data is deleted; a later download starts from zero.",
            "Cancel download"))
        if ok:
            await self._simple(t, "downloads.cancel", "cancelled", keep_partial=False)

    def _named(self, t: Target) -> str:
        """The model id, with its engine's name when several engines are followed (for confirmations)."""
        fleet = self.app.fleet
        return f"{t.model_id} on {fleet.display(fleet.owner(t.key))}" if fleet.multi else t.model_id

    async def _cancel_queued(self, qid: str) -> None:
        ok = await self.app.push_screen_wait(ConfirmScreen(f"Cancel the queued request {qid}?", "Its caller stops waiting.", "Cancel request"))
        if ok and await self._call(self.app.link, "fallback.queue_cancel", queue_id=qid) is not None:
            self.app.notify(f"{qid}: cancelled")
            self._after("queue")

    def action_priority(self, delta: int) -> None:
        if (t := self._target()) and self._offered(t.link, "downloads.set_priority"):
            self._run(self._priority(t, delta))

    async def _priority(self, t: Target, delta: int) -> None:
        mid = t.model_id
        raw = self.app.pane("downloads").table.raw(t.key) if self.app.pane("downloads").table else None  # type: ignore[union-attr]
        current = (raw or {}).get("priority")
        if current not in PRIORITY_STEPS:
            prog = await self._call(t.link, "downloads.progress", model_id=mid)
            if prog is None:
                return
            current = prog.get("priority", "normal")
        current = "normal" if current == "medium" else current
        i = PRIORITY_STEPS.index(current) if current in PRIORITY_STEPS else 1
        new = PRIORITY_STEPS[max(0, min(len(PRIORITY_STEPS) - 1, i + delta))]
        if new == current:
            self.app.notify(f"{mid}: priority is already {current}", model_id=mid)
            return
        if await self._call(t.link, "downloads.set_priority", model_id=mid, priority=new) is not None:
            self.app.notify(f"{mid}: priority {current} → {new}", model_id=mid)
            self._after("downloads")

    def action_request(self) -> None:
        t = self._target()
        if not t:
            return
        if "models.request" in t.link.methods:
            self._run(self._request(t))
        elif self._offered(t.link, "downloads.start"):
            self._run(self._start(t))

    async def _request(self, t: Target) -> None:
        mid = t.model_id
        res = await self._call(t.link, "models.request", model_id=mid)
        if res is None:
            return
        wait = res.get("estimated_wait_seconds")
        extra = f", ready in about {fmt.duration(wait)}" if wait else ""
        self.app.notify(f"{mid}: {str(res.get('action_taken', 'done')).replace('_', ' ')}{extra}", model_id=mid)
        self._after("downloads", "models", "queue")

    async def _start(self, t: Target) -> None:
        mid = t.model_id
        res = await self._call(t.link, "downloads.start", model_id=mid)
        if res is not None:
            self.app.notify(f"{mid}: download started", model_id=mid)
            self._after("downloads", "models")

    # --- health and updates --------------------------------------------------
    def action_check(self) -> None:
        if (t := self._target()) and self._offered(t.link, "health.check"):
            self._run(self._check(t))

    async def _check(self, t: Target) -> None:
        mid = t.model_id
        self.app.notify(f"{mid}: full health check running…", model_id=mid, timeout=3600)
        res = await self._call(t.link, "health.check", timeout=3600, model_id=mid, check_type="full")
        if res is not None:
            result = res.get("result") or {}
            if result.get("installed") is False:
                self.app.notify(f"{mid} is not installed: nothing to check", model_id=mid, follows=True)
                return
            health = result.get("overall_health") or result.get("status") or "done"
            sev = "information" if health in ("healthy", "done") else "warning"
            self.app.notify(f"{mid}: health check {health}", severity=sev, model_id=mid, follows=True)
            self._after("health", "models")

    def action_repair(self) -> None:
        if (t := self._target()) and self._offered(t.link, "health.repair"):
            self._run(self._repair(t))

    async def _repair(self, t: Target) -> None:
        mid = t.model_id
        ok = await self.app.push_screen_wait(ConfirmScreen(
            f"Repair {self._named(t)}?", "Bad pieces are downloaded again and replaced; files may be rewritten.", "Repair", danger=False))
        if not ok:
            return
        res = await self._call(t.link, "health.repair", timeout=3600, model_id=mid)
        if res is not None:
            actions = ", ".join(res.get("actions_taken") or []) or "nothing to do"
            self.app.notify(f"{mid}: repaired ({actions.replace('_', ' ')}, {fmt.size(res.get('bytes_redownloaded'))} fetched again)",
                            model_id=mid, follows=True)
            self._after("health", "models")

    def action_update(self) -> None:
        if (t := self._target()) and self._offered(t.link, "models.update"):
            self._run(self._update(t))

    async def _update(self, t: Target) -> None:
        mid = t.model_id
        raw = self.app.pane("models").table.raw(t.key) if self.app.pane("models").table else None  # type: ignore[union-attr]
        raw = raw or {}
        keys = shown_keys(self.app.keymap_overrides)
        cur = raw.get("current_version")
        if not cur or raw.get("availability_status") == "missing":
            self.app.notify(f"{mid} is not installed: press {keys['mavail.request']} to download it", severity="warning", model_id=mid)
            return
        latest = raw.get("latest_version") or raw.get("version")
        if not raw.get("update_available") or not latest or latest == cur:
            self.app.notify(f"{mid} is at version {cur}, the catalog's newest: nothing to update", model_id=mid)
            return
        ok = await self.app.push_screen_wait(ConfirmScreen(
            f"Update {self._named(t)} from {cur} to {latest}?", "The new version is downloaded and verified before it replaces the old one; "
            "the old one is kept as configured (updates.keep_versions).", "Update", danger=False))
        if ok and (res := await self._call(t.link, "models.update", model_id=mid)) is not None:
            self.app.notify(f"{mid}: updating {res.get('from_version', cur)} → {res.get('to_version', latest)}", model_id=mid)
            self._after("models", "downloads")

    def action_remove(self) -> None:
        if (t := self._target()) and self._offered(t.link, "models.remove"):
            self._run(self._remove(t))

    async def _remove(self, t: Target) -> None:
        mid = t.model_id
        ok = await self.app.push_screen_wait(ConfirmScreen(
            f"Remove {self._named(t)}?", "Its installed files are deleted; it stays in the catalog and can be downloaded again.", "Remove"))
        if ok and (res := await self._call(t.link, "models.remove", model_id=mid)) is not None:
            self.app.notify(f"{mid}: removed {', '.join(res.get('removed_versions') or [])} "
                            f"({fmt.size(res.get('freed_bytes'))} freed)", model_id=mid)
            self._after("models", "storage", "health")

    # --- storage -------------------------------------------------------------
    def action_cleanup(self) -> None:
        link = self._link()
        if self._offered(link, "storage.cleanup"):
            self._run(self._cleanup(link))

    async def _cleanup(self, link: Any) -> None:
        plan = await self._call(link, "storage.cleanup", cleanup_type="auto", dry_run=True)
        if plan is None:
            return
        items = plan.get("plan")
        if items is None:  # an engine that reports only model ids
            items = [{"model_id": m, "path": m} for m in plan.get("models_removed") or plan.get("models_to_remove") or []]
        if not items:
            self.app.notify("Cleanup: nothing would be removed.")
            return
        kept = plan.get("models_preserved") or []
        savings = plan.get("planned_savings_gb", plan.get("space_freed_gb"))
        body = "\n".join(
            [f"Would remove {plural(len(items), 'item')}, freeing {fmt.size_gb(savings)}:"]
            + [f"  - {i.get('path') or i.get('model_id')}  {fmt.size(i.get('size_bytes'))}  {readable(i.get('reason') or '')}".rstrip()
               for i in items]
            + ([f"Kept: {', '.join(map(str, kept[:8]))}{' …' if len(kept) > 8 else ''}"] if kept else [])
            + ["Nothing has been deleted yet."]
        )
        if not await self.app.push_screen_wait(ConfirmScreen("Delete these?", body, "Delete")):
            self.app.notify("Cleanup cancelled; nothing deleted.")
            return
        if plan.get("plan_id"):  # run exactly the plan shown (the engine re-checks each item is still safe)
            res = await self._call(link, "storage.cleanup", plan_id=plan["plan_id"], dry_run=False)
        else:
            doomed = [i["model_id"] for i in items if i.get("model_id")]
            res = await self._call(link, "storage.cleanup", cleanup_type="manual", models_to_remove=doomed, dry_run=False)
        if res is not None:
            removed = len(res.get("models_removed") or []) + len(res.get("partial_removed") or [])
            kept_now = [p for p in (res.get("models_preserved") or []) if p not in kept]
            self.app.notify(f"Cleanup removed {plural(removed, 'item')}, freed {fmt.size_gb(res.get('space_freed_gb'))}"
                            + (f"; kept {', '.join(kept_now)} (no longer safe)" if kept_now else ""))
            self._after("storage", "models", "usage")

    # --- view ----------------------------------------------------------------
    def action_sort(self) -> None:
        table = self.active_pane().table
        if table is not None:
            table.cycle_sort()
            self.show_view(self.active_name())

    def action_help(self) -> None:
        from mavail.tui.screens.help import HelpScreen

        # built once and kept: composing and styling it again at each press took most of the time to show it
        if not self.app.is_screen_installed("help"):
            self.app.install_screen(HelpScreen(), "help")
        self.app.push_screen("help")

    def action_quit(self) -> None:
        self.app.exit(0)

    def action_toggle_theme(self) -> None:
        self.app.toggle_light_theme()

    def action_refresh(self) -> None:
        self.active_pane().reload()

    def action_reconnect(self) -> None:
        self.app.fleet.retry_now()
