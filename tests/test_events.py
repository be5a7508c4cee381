"""Event buffers: progress collapses to the newest, status changes are never dropped, overflow is explicit."""

from __future__ import annotations

from mavail.core.events import EventBus


async def test_progress_supersedes_and_keeps_order():
    bus = EventBus()
    sub = bus.subscribe()
    bus.emit("model_download_progress", model_id="a", progress_percent=1)
    bus.emit("model_availability_change", model_id="a", old_status="missing", new_status="downloading")
    bus.emit("model_download_progress", model_id="a", progress_percent=2)
    bus.emit("model_download_progress", model_id="b", progress_percent=7)
    bus.emit("model_download_progress", model_id="a", progress_percent=3)
    batch = await sub.next_batch()
    assert [(e.type, e.params.get("progress_percent")) for e in batch] == [
        ("model_availability_change", None),
        ("model_download_progress", 7),
        ("model_download_progress", 3),
    ]
    assert sub.dropped_superseded == 2


async def test_filters():
    bus = EventBus()
    sub = bus.subscribe(types=["download_failed"], model_ids=["x"])
    bus.emit("download_failed", model_id="y", error_code="SOURCE_UNAVAILABLE", message="m")
    bus.emit("config_changed", changed={})
    bus.emit("download_failed", model_id="x", error_code="SOURCE_UNAVAILABLE", message="m")
    batch = await sub.next_batch()
    assert [e.params["model_id"] for e in batch] == ["x"]


async def test_overflow_marks_subscription_instead_of_dropping_status_changes():
    bus = EventBus()
    sub = bus.subscribe(max_pending=10)
    for i in range(10):
        bus.emit("model_availability_change", model_id=str(i), old_status="a", new_status="b")
    assert not sub.overflowed
    bus.emit("model_availability_change", model_id="z", old_status="a", new_status="b")
    assert sub.overflowed
    assert await sub.next_batch() == [] or sub.overflowed


async def test_unsubscribe():
    bus = EventBus()
    sub = bus.subscribe()
    assert bus.unsubscribe(sub.id) and not bus.unsubscribe(sub.id)
    bus.emit("config_changed", changed={})
    assert await sub.next_batch() == []
