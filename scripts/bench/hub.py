"""Hub figures against the test hub (which the real `huggingface_hub` client accepts), each beside its reference.

1. resolves per file: `/resolve` requests the Hub sees for each file of a download               (goal 1)
2. a model already in the Hugging Face cache, filled by `huggingface_hub.snapshot_download`:
   bytes fetched from the storage host (goal 0), and the time to adopt its big file / `cp` of the same blob
3. one flipped byte in the installed big file, `health.repair`: bytes fetched again               (goal one piece)

    .venv/bin/python scripts/bench/hub.py [--gib 2.0]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import engine_process, short_tmpdir

import tomlkit

from mavail.rpc.client import Client
from mavail.testing.hub import MIB, Hub, Synthetic


def _home(home: Path) -> None:
    home.mkdir()
    (home / "catalog.toml").write_text('[[models]]\nid = "wan"\nversion = "1"\nmodel_type = "text_to_video"\n'
                                       'source = "hf://acme/wan@main"\n')
    (home / "config.toml").write_text(tomlkit.dumps({"storage": {"min_free_gb": 0.0}}))


def _download(sock: Path) -> float:
    with Client(sock, timeout=60) as c:
        t0 = time.monotonic()
        c.call("downloads.start", {"model_id": "wan"})
        while True:
            p = c.call("downloads.progress", {"model_id": "wan"})
            if p["status"] == "completed":
                return time.monotonic() - t0
            if p["status"] in ("failed", "cancelled", "paused"):
                raise RuntimeError(f"{p['status']}: {p['error_code']} {p['error_message']}")
            time.sleep(0.02)


def _fill_cache(hub: Hub, hf_home: Path) -> Path:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and "proxy" not in k.lower()}
    env.update({"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(hf_home), "HF_HUB_DISABLE_TELEMETRY": "1",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_XET": "1", "NO_PROXY": "*"})
    code = "import huggingface_hub as h; h.snapshot_download(repo_id='acme/wan')"
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return hf_home / "hub"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=2.0, help="size of the big file")
    args = ap.parse_args()
    big = Synthetic("hub-bench", int(args.gib * 1024) * MIB)
    files = {"model_index.json": b'{"_class_name": "WanPipeline"}\n', "transformer/w.safetensors": big,
             "vae/vae.safetensors": Synthetic("hub-vae", 64 * MIB)}
    out = []
    with short_tmpdir() as tmp, Hub() as hub:
        hub.add_repo("acme/wan", files)
        env = {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp / "no-token-here"), "HF_HUB_CACHE": str(tmp / "empty-cache")}
        home, sock = tmp / "home", tmp / "e.sock"
        _home(home)
        with engine_process(home, sock, env=env):
            took = _download(sock)
            per_file = dict(hub.resolves)
            out.append(f"1. resolves per file: {sorted(per_file.values())} for {len(files)} files "
                       f"({big.size // MIB} MiB file downloaded in {took:.2f} s)  (goal 1 each)")
            print(out[-1], flush=True)

            installed = home / "models" / "wan" / "1" / "transformer" / "w.safetensors"
            with open(installed, "r+b") as fh:
                fh.seek(big.size // 3)
                b = fh.read(1)
                fh.seek(big.size // 3)
                fh.write(bytes([b[0] ^ 0xFF]))
            hub.reset_counters()
            with Client(sock, timeout=600) as c:
                settings = c.call("config.get")
                piece = int(settings.get("downloads.piece_size_mb") or settings["downloads"]["piece_size_mb"]) * MIB
                res = c.call("health.repair", {"model_id": "wan", "repair_type": "auto"})
            out.append(f"3. one flipped byte in {big.size // MIB} MiB, health.repair: {hub.storage_bytes()} bytes from the "
                       f"storage host, {res.get('bytes_redownloaded')} reported; one piece is {piece}  (goal one piece)")
            print(out[-1], flush=True)

        cache = _fill_cache(hub, tmp / "hf")
        blob = cache / "models--acme--wan" / "blobs" / big.sha256()
        hub.reset_counters()
        home2, sock2 = tmp / "home2", tmp / "e2.sock"
        _home(home2)
        env2 = {**env, "HF_HUB_CACHE": str(cache)}
        with engine_process(home2, sock2, env=env2):
            adopt = _download(sock2)
        t0 = time.monotonic()
        shutil.copyfile(blob, tmp / "cp.bin")
        cp = time.monotonic() - t0
        t0 = time.monotonic()
        h = hashlib.sha256()
        with open(blob, "rb") as fh:
            while chunk := fh.read(4 * MIB):
                h.update(chunk)
        floor = time.monotonic() - t0
        out.append(f"2. already in the HF cache: {hub.storage_bytes()} bytes from the storage host (goal 0); adopting the "
                   f"model ({big.size // MIB} MiB file verified by sha256, hard-linked) {adopt:.2f} s / cp of the blob "
                   f"{cp:.2f} s = {adopt / cp:.2f}; floor: sha256 of the blob {floor:.2f} s (adopting / floor "
                   f"{adopt / floor:.2f})")
        print(out[-1], flush=True)
    print("\n## summary (load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + ")")
    for line in sorted(out):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
