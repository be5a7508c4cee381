"""Helpers for Hub tests: run the real `huggingface_hub` client against the test hub, in a process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

CLIENT_TIMEOUT_S = 60


def hf_client_env(endpoint: str, hf_home: Path, token: str | None = None) -> dict[str, str]:
    """The environment `huggingface_hub` reads: HF_ENDPOINT at the test hub, HF_HOME (and so HF_HUB_CACHE) under the test,
    no telemetry, no proxy, and HF_TOKEN only when given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and "proxy" not in k.lower()}
    env.update({"HF_ENDPOINT": endpoint, "HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub"),
                "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_XET": "1",
                "NO_PROXY": "*"})
    if token:
        env["HF_TOKEN"] = token
    return env


_SCRIPT = r"""
import json, sys
import huggingface_hub as h
from huggingface_hub import utils


def one(op, args):
    try:
        if op == "download":
            return {"path": h.hf_hub_download(**args)}
        if op == "snapshot":
            return {"path": h.snapshot_download(**args)}
        if op == "metadata":
            token = args.pop("token", None)
            m = h.get_hf_file_metadata(h.hf_hub_url(**args), token=token)
            return {"commit": m.commit_hash, "etag": m.etag, "size": m.size, "location": m.location}
        if op == "tree":
            return {"entries": [{"path": e.path, "size": getattr(e, "size", None),
                                 "sha256": e.lfs.sha256 if getattr(e, "lfs", None) else None}
                                for e in h.HfApi().list_repo_tree(recursive=True, **args)]}
        if op == "info":
            i = h.HfApi().model_info(files_metadata=True, **args)
            return {"sha": i.sha, "gated": i.gated, "files": sorted(s.rfilename for s in i.siblings)}
        raise SystemExit("unknown op " + op)
    except utils.HfHubHTTPError as e:
        return {"error": type(e).__name__, "status": e.response.status_code, "message": str(e)}


print(json.dumps([one(op, args) for op, args in json.loads(sys.argv[1])]))
"""


def hf_client_calls(env: dict[str, str], calls: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Run several `huggingface_hub` calls in one process (each op as in `hf_client`; a `token` arg per call)."""
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(calls)], env=env, capture_output=True, text=True,
                          timeout=CLIENT_TIMEOUT_S)
    if proc.returncode != 0:
        raise AssertionError(f"huggingface_hub calls failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def hf_client(op: str, env: dict[str, str], **args: Any) -> dict[str, Any]:
    """Run one `huggingface_hub` call (`download`, `snapshot`, `metadata`, `tree`, `info`) with `env`; its result as JSON,
    or {"error": the exception's class name, "status", "message"} when the client raised an HTTP error."""
    return hf_client_calls(env, [(op, args)])[0]
