"""Piece hashes in XXH3-128: old sha256 pieces migrated as checks run, the proof a full check used, repairs in either algorithm."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
import xxhash

from mavail.core.piecehash import PIECE_ALGO
from mavail.rpc.client import AsyncClient
from mavail.testing.mirror import Mirror
from tests.helpers import running_engine, synthetic_bytes

MIB = 1024 * 1024
BIG = synthetic_bytes("unet", 4 * MIB + 4321)  # 5 pieces of 1 MiB
SMALL = synthetic_bytes("vae", 300_000)


@pytest.fixture
def mirror():
    with Mirror() as m:
        yield m


def setup(home: Path, mirror: Mirror) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text("[downloads]\npiece_size_mb = 1\n[health]\nscheduler_tick_s = 3600\n")
    (home / "catalog.toml").write_text(mirror.add_model("m1", {"unet/model.bin": BIG, "vae.bin": SMALL}))
    d = home / "models" / "m1" / "1.0.0"
    (d / "unet").mkdir(parents=True)
    (d / "unet/model.bin").write_bytes(BIG)
    (d / "vae.bin").write_bytes(SMALL)
    return d


def flip(p: Path, offset: int) -> None:
    with open(p, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x5A]))


def rows(home: Path, sql: str, *args):
    with sqlite3.connect(home / "state.db") as c:
        return c.execute(sql, args).fetchall()


def piece_hashes(data: bytes, algo: str) -> list[str]:
    make = {"sha256": hashlib.sha256, "xxh3_128": xxhash.xxh3_128}[algo]
    return [make(data[i:i + MIB]).hexdigest() for i in range(0, len(data), MIB)]


def recorded(home: Path, path: str) -> tuple[set[str], list[str]]:
    got = rows(home, "SELECT algo, sha256 FROM file_pieces WHERE model_id = 'm1' AND path = ? ORDER BY idx", path)
    return {r[0] for r in got}, [r[1] for r in got]


def make_old_database(home: Path) -> None:
    """Turn the database back into the schema before piece algorithms, its pieces recorded in sha256 as they were then."""
    with sqlite3.connect(home / "state.db") as c:
        c.execute("DELETE FROM file_pieces")
        c.execute("ALTER TABLE file_pieces DROP COLUMN algo")
        c.execute("DELETE FROM schema_migrations WHERE name = '0007_piece_algo'")
        for path, data in (("unet/model.bin", BIG), ("vae.bin", SMALL)):
            c.executemany("INSERT INTO file_pieces VALUES ('m1', '1.0.0', ?, ?, ?, ?)",
                          [(path, MIB, i, h) for i, h in enumerate(piece_hashes(data, "sha256"))])


async def test_sha256_pieces_of_an_old_database_verified_located_and_migrated(home: Path, mirror: Mirror):
    d = setup(home, mirror)
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        await c.call("health.check", model_id="m1")  # installs the hand-copied model, records pieces
    make_old_database(home)
    flip(d / "unet/model.bin", 3 * MIB + 10)
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        assert recorded(home, "vae.bin") == ({"sha256"}, piece_hashes(SMALL, "sha256"))  # the migration: old pieces read as sha256
        res = await c.call("health.check", model_id="m1", check_type="full")
        r = res["result"]
        by_path = {f["path"]: f for f in r["files"]}
        assert by_path["unet/model.bin"]["state"] == "changed_bytes" and by_path["unet/model.bin"]["broken_pieces"] == [3]
        assert by_path["vae.bin"]["verified"] and by_path["vae.bin"]["proof"] == "sha256_pieces"
        assert r["proofs"] == ["sha256_pieces"]
        # the proven file is recorded in XXH3-128 now; the damaged one keeps its sha256 pieces, which locate the damage
        assert recorded(home, "vae.bin") == ({PIECE_ALGO}, piece_hashes(SMALL, "xxh3_128"))
        assert recorded(home, "unet/model.bin") == ({"sha256"}, piece_hashes(BIG, "sha256"))
        mirror.reset_counters()
        rep = await c.call("health.repair", model_id="m1")
        assert rep["success"] and rep["actions_taken"] == ["integrity_check", "integrity_fix"], rep
        assert mirror.bytes_served.get("m1/unet/model.bin") == MIB and rep["bytes_redownloaded"] == MIB
        assert (d / "unet/model.bin").read_bytes() == BIG
        assert recorded(home, "unet/model.bin") == ({PIECE_ALGO}, piece_hashes(BIG, "xxh3_128"))
        again = await c.call("health.check", model_id="m1", check_type="full")
        assert again["result"]["overall_health"] == "healthy" and again["result"]["proofs"] == ["xxh3_128_pieces"]


@pytest.mark.parametrize("algo", ["sha256", "xxh3_128"])
async def test_flipped_byte_repaired_by_one_piece_whatever_the_pieces_algorithm(home: Path, mirror: Mirror, algo: str):
    d = setup(home, mirror)
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        await c.call("health.check", model_id="m1")
        assert recorded(home, "unet/model.bin") == ({PIECE_ALGO}, piece_hashes(BIG, "xxh3_128"))
    if algo == "sha256":
        with sqlite3.connect(home / "state.db") as conn:
            for path, data in (("unet/model.bin", BIG), ("vae.bin", SMALL)):
                conn.executemany("UPDATE file_pieces SET sha256 = ?, algo = 'sha256' WHERE model_id = 'm1' AND path = ? AND idx = ?",
                                 [(h, path, i) for i, h in enumerate(piece_hashes(data, "sha256"))])
    flip(d / "unet/model.bin", 2 * MIB + 77)
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        mirror.reset_counters()
        rep = await c.call("health.repair", model_id="m1", repair_type="integrity_fix")
        assert rep["success"], rep
        assert mirror.bytes_served == {"m1/unet/model.bin": MIB}
        assert (d / "unet/model.bin").read_bytes() == BIG
        assert recorded(home, "unet/model.bin") == ({PIECE_ALGO}, piece_hashes(BIG, "xxh3_128"))


async def test_full_check_proves_by_fast_pieces_unless_sha256_is_asked(home: Path, mirror: Mirror):
    d = setup(home, mirror)
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        first = await c.call("health.check", model_id="m1")  # no pieces yet: the whole-file sha256 decides
        assert first["result"]["proofs"] == ["sha256"]
        fast = await c.call("health.check", model_id="m1")
        assert fast["result"]["proofs"] == ["xxh3_128_pieces"] and fast["result"]["overall_health"] == "healthy"
        assert all(f["proof"] == "xxh3_128_pieces" for f in fast["result"]["files"])
        slow = await c.call("health.check", model_id="m1", verify_sha256=True)
        assert slow["result"]["proofs"] == ["sha256"] and slow["result"]["bytes_hashed"] == len(BIG) + len(SMALL)
        flip(d / "vae.bin", 1000)
        bad = await c.call("health.check", model_id="m1", verify_sha256=True)
        vae = {f["path"]: f for f in bad["result"]["files"]}["vae.bin"]
        assert vae["state"] == "changed_bytes" and vae["broken_pieces"] == [0] and vae["proof"] is None


async def test_pieces_that_disagree_with_a_proven_sha256_are_recorded_again(home: Path, mirror: Mirror):
    setup(home, mirror)
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        await c.call("health.check", model_id="m1")
        with sqlite3.connect(home / "state.db") as conn:
            conn.execute("UPDATE file_pieces SET sha256 = ? WHERE path = 'vae.bin' AND idx = 0", ("0" * 32,))
        res = await c.call("health.check", model_id="m1", verify_sha256=True)
        assert res["result"]["overall_health"] == "healthy"
        assert recorded(home, "vae.bin") == ({PIECE_ALGO}, piece_hashes(SMALL, "xxh3_128"))


def test_sha256_pieces_given_without_an_algorithm_are_recorded_as_sha256(tmp_path: Path):
    from mavail.core import installed
    from mavail.core.state import Database

    db = Database(tmp_path / "state.db")
    try:
        db.migrate_sync()
        f = installed.VerifiedFile("a.bin", len(SMALL), hashlib.sha256(SMALL).hexdigest(), 1, 2, 3.0, MIB, piece_hashes(SMALL, "sha256"))
        db.write_sync(lambda c: installed.record_files(c, "m", "1", [f]))
        assert db.read_sync(lambda c: installed.pieces(c, "m", "1", "a.bin")) == (MIB, piece_hashes(SMALL, "sha256"), "sha256")
        g = installed.VerifiedFile("b.bin", len(SMALL), hashlib.sha256(SMALL).hexdigest(), 1, 2, 3.0, MIB, piece_hashes(SMALL, "xxh3_128"))
        db.write_sync(lambda c: installed.record_files(c, "m", "1", [g]))
        assert db.read_sync(lambda c: installed.pieces(c, "m", "1", "b.bin")) == (MIB, piece_hashes(SMALL, "xxh3_128"), PIECE_ALGO)
    finally:
        db.close()
