"""kvl pull / kvl models against a local server that answers like the hub. No test reaches the real hub."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvl_cli.synthetic import SCRIPTED_ANSWER

from . import hubserver
from .conftest import kvl_env
from .terminal import in_terminal

REPO = hubserver.TOY_REPO


@pytest.fixture
def hub(scripted, tmp_path, monkeypatch):
    state, server, url = hubserver.toy_hub(scripted.model, scripted.mmproj, tmp_path / "catalog")
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("KVL_CATALOG", str(tmp_path / "catalog"))
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "5")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "5")
    yield state
    server.shutdown()


def installed_folder(home: Path) -> Path:
    return home / "kvl" / "models" / "toy-kimi-vl" / "Q4_K_M"


def test_fresh_pull_then_use_by_default(kvl, hub, isolated, images):
    r = kvl("pull")
    assert r.code == 0, r.err
    folder = installed_folder(isolated)
    assert "toy-Q4_K_M.gguf" in r.err and "to download" in r.err and "free" in r.err
    assert "installed toy-kimi-vl:Q4_K_M (sha256 verified)" in r.err
    manifest = json.loads((folder / "kvl-manifest.json").read_text())
    for role in ("model", "mmproj"):
        f = manifest["files"][role]
        assert hashlib.sha256((folder / f["file"]).read_bytes()).hexdigest() == f["sha256"]
    r = kvl("caption", images["jpg"])  # no --model: the pulled default
    assert r.code == 0 and r.out == SCRIPTED_ANSWER + "\n"
    rows = json.loads(kvl("models", "--json").out)
    row = next(x for x in rows if x["quant"] == "Q4_K_M")
    assert row["installed"] and row["verified"] and row["default"] and row["path"] == str(folder)
    paths = kvl("models", "path", "toy-kimi-vl").out.split()
    assert paths == [str(folder / "toy-Q4_K_M.gguf"), str(folder / "mmproj-toy-Q8_0.gguf")]


def test_pulling_an_installed_pair_answers_at_once(kvl, hub):
    assert kvl("pull").code == 0
    before = len(hub.requests)
    r = kvl("pull")
    assert r.code == 0
    assert "already installed, verified" in r.err
    assert len(hub.requests) == before  # not a single request
    r = kvl("pull", "--force")
    assert r.code == 0 and len(hub.requests) > before


def test_cut_off_transfer_resumes(kvl, hub, isolated):
    hub.cut_after["big-Q4_K_M.gguf"] = 11 * 2**20
    folder = isolated / "kvl" / "models" / "toy-kimi-vl" / "BIG"
    r = kvl("pull", "--quant", "BIG")
    if r.code != 0:  # the client may give up on the first try; the next pull resumes
        assert r.code == 6 and "kvl pull" in r.err
        assert not (folder / "kvl-manifest.json").exists()
        r = kvl("pull", "--quant", "BIG")
    assert r.code == 0, r.err
    ranges = [q for q in hub.requests if "big-Q4_K_M.gguf Range=bytes=" in q]
    assert ranges and not ranges[0].endswith("bytes=0-"), hub.requests  # resumed, not restarted
    assert (folder / "kvl-manifest.json").exists()


def test_sha256_mismatch_deletes_the_file(kvl, hub, isolated):
    hub.corrupt.add("mmproj-toy-Q8_0.gguf")
    r = kvl("pull")
    assert r.code == 6
    assert "failed its sha256 check" in r.err and "deleted it" in r.err
    folder = installed_folder(isolated)
    assert not (folder / "mmproj-toy-Q8_0.gguf").exists()
    assert not (folder / "kvl-manifest.json").exists()
    rows = json.loads(kvl("models", "--json").out)
    assert not any(x["installed"] for x in rows)


def test_sha256_from_the_hub_listing(kvl, hub, isolated):
    hub.corrupt.add("toy-Q4_K_M.gguf")
    r = kvl("pull", "toy-kimi-vl", "--quant", "HUBSHA")  # catalog has no sha: the tree API's LFS sha256 is used
    assert r.code == 6 and "failed its sha256 check" in r.err


def test_missing_repo_and_file_and_private_repo(kvl, hub):
    r = kvl("pull", "hf:kvl-test/nope-GGUF")
    assert r.code == 6 and "kvl: error:" in r.err and "not found" in r.err
    r = kvl("pull", "hf:kvl-test/toy-GGUF", "--file", "nope.gguf", "--mmproj", "mmproj-toy-Q8_0.gguf")
    assert r.code == 6 and "has no file nope.gguf" in r.err and "toy-Q4_K_M.gguf" in r.err
    r = kvl("pull", "hf:kvl-test/private-GGUF", "--file", "x.gguf", "--mmproj", "x.gguf")
    assert r.code == 6 and "HF_TOKEN" in r.err
    assert "Traceback" not in r.err


def test_disk_too_small_refuses_before_downloading(kvl, hub, monkeypatch):
    from kvl_cli.store import hub as hubmod

    monkeypatch.setattr(hubmod, "free_space", lambda folder: 1000)
    r = kvl("pull")
    assert r.code == 7
    assert "not enough disk space" in r.err
    assert not any("/cdn/" in q for q in hub.requests)


def test_offline_uses_what_is_installed(kvl, hub, images, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = kvl("pull")
    assert r.code == 6 and "offline" in r.err
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert kvl("pull").code == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = len(hub.requests)
    assert "already installed" in kvl("pull").err
    r = kvl("caption", images["jpg"])
    assert r.code == 0 and r.out == SCRIPTED_ANSWER + "\n"
    assert len(hub.requests) == n


def test_unreachable_hub_fails_fast(kvl, hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    r = kvl("pull")
    assert r.code == 6 and "cannot reach the hub" in r.err


def test_concurrent_pulls_do_not_corrupt_each_other(hub, isolated, tmp_path):
    env = kvl_env(HF_ENDPOINT=hub_url(hub), KVL_CATALOG=str(tmp_path / "catalog"))
    procs = [subprocess.Popen([sys.executable, "-m", "kvl_cli", "pull"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    folder = installed_folder(isolated)
    manifest = json.loads((folder / "kvl-manifest.json").read_text())
    for f in manifest["files"].values():
        assert hashlib.sha256((folder / f["file"]).read_bytes()).hexdigest() == f["sha256"]


def hub_url(state) -> str:

    return os.environ["HF_ENDPOINT"]


def test_other_repositories_by_hf_name(kvl, hub, images):
    r = kvl("pull", f"hf:{REPO}")
    assert r.code == 0
    assert "toy-Q4_K_M.gguf" in r.out and "mmproj-toy-Q8_0.gguf" in r.out and "README" not in r.out
    r = kvl("pull", f"hf:{REPO}", "--file", "toy-Q4_K_M.gguf", "--mmproj", "mmproj-toy-Q8_0.gguf", "--json")
    assert r.code == 0, r.err
    info = json.loads(r.out)
    assert info["name"] == f"hf:{REPO}" and info["quant"] == "toy-Q4_K_M"
    r = kvl("caption", images["jpg"], "--model", f"hf:{REPO}")
    assert r.code == 0 and r.out == SCRIPTED_ANSWER + "\n"


def test_remove(kvl, hub, isolated):
    assert kvl("pull").code == 0
    r = kvl("models", "rm", "toy-kimi-vl:Q4_K_M")
    assert r.code == 0 and "removed toy-kimi-vl:Q4_K_M" in r.err
    assert not installed_folder(isolated).exists()
    r = kvl("models", "path", "toy-kimi-vl")
    assert r.code == 4 and "is not installed" in r.err


def test_models_in_a_pipe_prints_whole_values(kvl, hub, isolated, monkeypatch):
    """In a pipe the table has every value whole, on one line, whatever the width (at 80 columns the
    path was folded, or cut to "pat"); on a terminal it keeps to the terminal's width."""
    assert kvl("pull").code == 0
    folder = str(installed_folder(isolated))
    monkeypatch.setenv("COLUMNS", "80")
    r = kvl("models")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].split() == ["name", "quant", "size", "status", "path"]
    row = next(line for line in lines if "Q4_K_M" in line)
    assert len(row) > 80 and row.split()[:2] == ["toy-kimi-vl", "Q4_K_M"] and row.endswith(folder)
    assert all(len(line.split()) >= 5 for line in lines if line.startswith("toy-kimi-vl"))  # no folded rows

    code, written = in_terminal([sys.executable, "-m", "kvl_cli", "models"], kvl_env(NO_COLOR="1", TERM="xterm"), 60)
    assert code == 0
    screen = written.decode().splitlines()
    assert screen[0].split() == ["name", "quant", "size", "status", "path"]
    assert all(len(line) <= 80 for line in screen) and folder not in "\n".join(screen)  # folded to fit


def test_first_use_pulls_with_auto_pull(kvl, hub, images, monkeypatch):
    monkeypatch.setenv("KVL_AUTO_PULL", "1")
    r = kvl("caption", images["jpg"])
    assert r.code == 0, r.err
    assert r.out == SCRIPTED_ANSWER + "\n"
    assert "installed toy-kimi-vl:Q4_K_M" in r.err


def test_first_use_in_a_pipe_names_the_pull_command(kvl, hub, images):
    r = kvl("caption", images["jpg"])
    assert r.code == 4 and "run `kvl pull`" in r.err


# ---- names that would leave the model's folder ------------------------------------------------------


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("kvl: error:")]


@pytest.mark.parametrize("bad", ["../../evil.gguf", "/tmp/evil.gguf", "sub/../../evil.gguf", "C:/evil.gguf",
                                 "..\\..\\evil.gguf", "sub//evil.gguf", "./evil.gguf", "evil\x00.gguf"])
@pytest.mark.parametrize("flag", ["--file", "--mmproj"])
def test_typed_file_names_cannot_leave_the_model_folder(kvl, hub, tmp_path, bad, flag):
    args = {"--file": "toy-Q4_K_M.gguf", "--mmproj": "mmproj-toy-Q8_0.gguf", flag: bad}
    r = kvl("pull", f"hf:{REPO}", *[x for kv in args.items() for x in kv])
    assert r.code == 2, r.err
    [line] = error_lines(r.err)
    assert f"{flag} {bad!r} is not a file inside the repository" in line
    assert "kvl pull hf:OWNER/REPO" in line  # says what to do
    assert hub.requests == []  # refused before a single request
    assert not list(tmp_path.rglob("evil*"))


def test_a_listing_with_an_escaping_name_is_refused(kvl, hub, tmp_path):
    evil = "kvl-test/evil-GGUF"
    hub.add(evil, "../../../../evil.gguf", b"GGUF owned")
    hub.add(evil, "toy-Q4_K_M.gguf", hub.repos[REPO]["toy-Q4_K_M.gguf"])
    hub.add(evil, "mmproj-toy-Q8_0.gguf", hub.repos[REPO]["mmproj-toy-Q8_0.gguf"])
    for args in ([], ["--file", "toy-Q4_K_M.gguf", "--mmproj", "mmproj-toy-Q8_0.gguf"]):
        r = kvl("pull", f"hf:{evil}", *args)
        assert r.code == 4, r.err
        [line] = error_lines(r.err)
        assert "lists a file named '../../../../evil.gguf': it climbs out with '..'" in line
        assert "refusing the repository" in line and "another repository" in line
        assert r.out == ""
    assert not any("/resolve/" in q or "/cdn/" in q for q in hub.requests)
    assert not list(tmp_path.rglob("evil*"))


def test_a_catalog_entry_with_an_escaping_name_is_refused(kvl, hub, tmp_path, monkeypatch):
    catalog = tmp_path / "evil-catalog"
    catalog.mkdir()
    (catalog / "evil.toml").write_text(f'''
name = "evil"
repo = "{REPO}"
default = true
default_quant = "Q4_K_M"
[quants.Q4_K_M]
model = {{ file = "../../../../../evil.gguf", size = 10, sha256 = "{"0" * 64}" }}
mmproj = {{ file = "mmproj-toy-Q8_0.gguf" }}
''')
    monkeypatch.setenv("KVL_CATALOG", str(catalog))
    r = kvl("pull")
    assert r.code == 4, r.err
    [line] = error_lines(r.err)
    assert "refusing the file name '../../../../../evil.gguf' from the catalog entry evil" in line
    assert hub.requests == []


@pytest.mark.parametrize("name", ["hf:../..", "hf:a/b/c", "hf:owner/..", "hf:owner/repo\n", "hf:/etc"])
def test_malformed_repository_names_are_usage_errors(kvl, hub, name):
    r = kvl("pull", name, "--file", "toy-Q4_K_M.gguf", "--mmproj", "mmproj-toy-Q8_0.gguf")
    assert r.code == 2, r.err
    assert "is not hf:OWNER/REPO" in error_lines(r.err)[0]
    assert kvl("pull", name).code == 2  # listing too
    assert hub.requests == []


def test_files_in_repository_subfolders_land_in_the_model_folder(kvl, hub, isolated):
    hub.add(REPO, "Q4/toy-Q4_K_M.gguf", hub.repos[REPO]["toy-Q4_K_M.gguf"])
    r = kvl("pull", f"hf:{REPO}", "--file", "Q4/toy-Q4_K_M.gguf", "--mmproj", "mmproj-toy-Q8_0.gguf", "--json")
    assert r.code == 0, r.err
    info = json.loads(r.out)
    folder = isolated / "kvl" / "models" / "hf--kvl-test--toy-GGUF" / "toy-Q4_K_M"
    assert info["model"] == str(folder / "Q4" / "toy-Q4_K_M.gguf") and Path(info["model"]).is_file()


# ---- boolean environment flags --------------------------------------------------------------------


def test_hf_hub_offline_takes_yes_and_no_words(kvl, hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "maybe")
    r = kvl("pull")
    assert r.code == 2 and "HF_HUB_OFFLINE='maybe' is not a yes/no value" in error_lines(r.err)[0]
    monkeypatch.setenv("HF_HUB_OFFLINE", "TRUE")
    r = kvl("pull")
    assert r.code == 6 and "offline mode" in r.err
    monkeypatch.setenv("HF_HUB_OFFLINE", "Off")
    r = kvl("pull")
    assert r.code == 0, r.err


def test_kvl_auto_pull_takes_yes_and_no_words(kvl, hub, images, monkeypatch):
    monkeypatch.setenv("KVL_AUTO_PULL", "sometimes")
    r = kvl("caption", images["jpg"])
    assert r.code == 2 and "KVL_AUTO_PULL='sometimes' is not a yes/no value" in r.err
    monkeypatch.setenv("KVL_AUTO_PULL", "no")
    r = kvl("caption", images["jpg"])
    assert r.code == 4 and "run `kvl pull`" in r.err
    monkeypatch.setenv("KVL_AUTO_PULL", "Yes")
    r = kvl("caption", images["jpg"])
    assert r.code == 0 and r.out == SCRIPTED_ANSWER + "\n", r.err
