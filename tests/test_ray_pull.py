"""``--ray`` with a catalog model: each node pulls and verifies the pair once into its own kvl home,
the pull's file lock making the node's other workers wait for that one download (README, *Where the
model and the media live*). One node, two CPUs, two workers starting at once; the node's ``ray start``
ran with a kvl home of its own (empty) and HF_ENDPOINT at a local server that answers like the hub.
The driver has neither the model nor the hub: the workers pull."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvl_cli.synthetic import SCRIPTED_ANSWER

from . import hubserver
from .conftest import kvl_env
from .raycluster import head_node, kvl_proc

pytest.importorskip("ray.data")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MODEL, MMPROJ = "toy-Q4_K_M.gguf", "mmproj-toy-Q8_0.gguf"
BAD = "bad-Q4_K_M.gguf"  # the toy model's bytes, served altered (quant BAD)


@dataclass
class Node:
    hub: hubserver.HubState
    url: str  # the hub's
    home: Path  # the node's KVL_HOME
    catalog: Path
    join: dict[str, str]  # the env a driver needs to join
    address: str
    logs: Path  # Ray's session logs (the workers' stderr)

    def folder(self, quant: str) -> Path:
        return self.home / "models" / "toy-kimi-vl" / quant

    def worker_lines(self, needle: str) -> list[str]:
        return [line for p in sorted(self.logs.glob("worker-*")) if p.is_file()
                for line in p.read_text(errors="replace").splitlines() if needle in line]


@pytest.fixture(scope="module")
def node(scripted, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root = tmp_path_factory.mktemp("node")
    catalog = root / "catalog"
    hub, server, url = hubserver.toy_hub(scripted.model, scripted.mmproj, catalog)
    data = scripted.model.read_bytes()
    sha_bad, sha_p = hub.add(hubserver.TOY_REPO, BAD, data), hashlib.sha256(scripted.mmproj.read_bytes()).hexdigest()
    hub.corrupt.add(BAD)
    with (catalog / "toy.toml").open("a") as f:
        f.write(f'[quants.BAD]\nmodel = {{ file = "{BAD}", size = {len(data)}, sha256 = "{sha_bad}" }}\n'
                f'mmproj = {{ file = "{MMPROJ}", size = {hub.sizes[1]}, sha256 = "{sha_p}" }}\n')
    home = root / "home"
    home.mkdir()
    # the node's environment: none of this process's kvl or hub settings, a home and a kvl home of its own
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KVL_", "HF_", "XDG_"))}
    env.update(HOME=str(home), KVL_HOME=str(home / "kvl"), HF_HOME=str(home / "hf"),
               XDG_CACHE_HOME=str(home / "cache"), XDG_CONFIG_HOME=str(home / "config"),
               XDG_DATA_HOME=str(home / "data"), HF_ENDPOINT=url, KVL_CATALOG=str(catalog),
               HF_HUB_ETAG_TIMEOUT="5", HF_HUB_DOWNLOAD_TIMEOUT="5", HF_HUB_DISABLE_TELEMETRY="1")
    try:
        with head_node(env, prefix="kvlp") as (address, join, temp):
            yield Node(hub, url, home / "kvl", catalog, join, address, temp / "session_latest" / "logs")
    finally:
        server.shutdown()


def caption_on(node: Node, photos: list[Path], *model: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    """``kvl caption --ray`` from a driver without the model, the hub or the catalog; (run, records by input)."""
    r = kvl_proc(["caption", "--ray", node.address, "--workers", "2", "--json", *model, *photos],
                 kvl_env(**node.join))
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    by_input = {rec["input"]: rec for rec in recs}
    assert len(by_input) == len(recs) == len(photos), r.stdout + r.stderr  # every input exactly once
    return r, by_input


def tree(folder: Path) -> dict[str, bytes | None]:
    """A model folder's files and their bytes; the manifest without its install time, and only the
    names of huggingface_hub's own bookkeeping (which holds times)."""
    out: dict[str, bytes | None] = {}
    for p in sorted(folder.rglob("*")):
        name = str(p.relative_to(folder))
        if not p.is_file():
            continue
        if name.startswith(".cache"):
            out[name] = None
        elif p.name == "kvl-manifest.json":
            manifest = json.loads(p.read_bytes())
            out[name] = json.dumps({k: v for k, v in manifest.items() if k != "installed_at"}).encode()
        else:
            out[name] = p.read_bytes()
    return out


def test_default_model_each_node_pulls_once(node, photos, scripted, kvl, isolated, monkeypatch):
    inputs = photos(4)
    node.hub.delay_s = 1.5  # each file: long enough for the second worker to find the first one downloading
    before = {name: node.hub.downloads(name) for name in (MODEL, MMPROJ)}
    try:
        r, recs = caption_on(node, inputs)  # no --model: the catalog's default, which the node lacks
    finally:
        node.hub.delay_s = 0
    assert r.returncode == 0, r.stderr
    for p in inputs:
        rec = recs[str(p)]
        assert rec["error"] is None and rec["answer"] == SCRIPTED_ANSWER, rec
        assert rec["model"] == "toy-kimi-vl:Q4_K_M"
    # one download of each file for the node's two workers: the second waited on the pull's lock
    assert {name: node.hub.downloads(name) - n for name, n in before.items()} == {MODEL: 1, MMPROJ: 1}
    assert len(node.worker_lines("installed toy-kimi-vl:Q4_K_M (sha256 verified)")) == 1
    # ...and the other worker, which found the pair missing while the first was downloading it, waited
    # on the lock and then found it installed (had it started after the download, it would not have pulled)
    assert len(node.worker_lines("toy-kimi-vl:Q4_K_M is already installed, verified")) == 1

    # installed and verified in the node's kvl home exactly as `kvl pull` installs it
    folder = node.folder("Q4_K_M")
    assert (folder / MODEL).read_bytes() == scripted.model.read_bytes()
    assert (folder / MMPROJ).read_bytes() == scripted.mmproj.read_bytes()
    monkeypatch.setenv("HF_ENDPOINT", node.url)
    monkeypatch.setenv("KVL_CATALOG", str(node.catalog))
    assert kvl("pull").code == 0  # here, into this test's own kvl home
    assert tree(folder) == tree(isolated / "kvl" / "models" / "toy-kimi-vl" / "Q4_K_M")
    monkeypatch.setenv("KVL_HOME", str(node.home))
    rows = json.loads(kvl("models", "--json").out)
    row = next(x for x in rows if x["quant"] == "Q4_K_M")
    assert row["installed"] and row["verified"] and row["path"] == str(folder)
    assert not any(x["installed"] for x in rows if x["quant"] != "Q4_K_M")


def test_a_corrupt_download_fails_every_input_and_installs_nothing(node, photos, kvl, monkeypatch):
    inputs = photos(4)
    before = node.hub.downloads(BAD)
    r, recs = caption_on(node, inputs, "--model", "toy-kimi-vl:BAD")
    for p in inputs:
        rec = recs[str(p)]
        assert rec.get("answer") is None and f"{BAD} failed its sha256 check" in rec["error"], rec
        assert rec["exit_code"] == 6
    assert r.returncode == 6, r.stderr  # all failed: the failure's own code (the network's)
    assert "round" not in r.stderr  # in one round: a worker without its model is not a lost worker
    assert r.stderr.strip().splitlines()[-1].startswith("kvl: 0 inputs done, 4 failed of 4")
    assert 1 <= node.hub.downloads(BAD) - before <= 2  # once per worker at most: it is never installed
    folder = node.folder("BAD")
    assert not (folder / BAD).exists() and not (folder / "kvl-manifest.json").exists()
    monkeypatch.setenv("KVL_CATALOG", str(node.catalog))
    monkeypatch.setenv("KVL_HOME", str(node.home))
    rows = json.loads(kvl("models", "--json").out)
    assert not next(x for x in rows if x["quant"] == "BAD")["installed"]


def test_a_worker_without_its_model_gives_each_row_the_reason(monkeypatch):
    """The worker's side of the case above, without a cluster: images and scenes alike; a row that
    failed before (its listing, its scene detection) keeps its own error."""
    from types import SimpleNamespace

    from kvl_cli.distributed import workers
    from kvl_cli.distributed.inputs import pack
    from kvl_cli.errors import NetworkError

    def no_model(model, mmproj):
        raise NetworkError(f"{BAD} failed its sha256 check: deleted it", hint="run `kvl pull` again")

    monkeypatch.setattr(workers, "node_model", no_model)
    spec = SimpleNamespace(output=None, model=SimpleNamespace(model="toy-kimi-vl:BAD", mmproj=None))
    gone = {"error": "gone: file not found", "exit_code": 3}
    scene = {"key": "/v/a.mp4#2", "file": "/v/a.mp4", "scene": 2, "start": 1.25, "end": 2.5, "scenes": 3,
             "info": {}, "path": "/v/a.mp4"}
    for cls, rows in ((workers.ImageWorker, [{"key": "/p/a.jpg", "path": "/p/a.jpg"}, {"key": "gone.jpg", **gone}]),
                      (workers.SceneWorker, [scene, {"key": "gone.mp4", **gone}])):
        out = cls(spec)({"key": [r["key"] for r in rows], "row": [pack(r)["row"] for r in rows]})
        assert out["key"] == [r["key"] for r in rows]
        assert out["ok"] == [False, False] and out["exit_code"] == [6, 3]
        first, second = (json.loads(x) for x in out["record"])
        assert first["error"].startswith(f"{BAD} failed its sha256 check") and second["error"] == gone["error"]
    assert out["scenes"][0] == 3  # the video's scene count, which a resume needs
    assert {k: first[k] for k in ("file", "scene", "start", "end", "caption")} == \
        {"file": "/v/a.mp4", "scene": 2, "start": 1.25, "end": 2.5, "caption": None}
