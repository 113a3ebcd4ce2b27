"""The Ray path's bookkeeping without a cluster: options, part files, resume, what is missing."""

from __future__ import annotations

import json
import os
import sys

import pytest

from kvl_cli.distributed.inputs import list_inputs
from kvl_cli.distributed.parts import (
    Store,
    close_rounds,
    dedupe,
    drop_failed,
    open_round,
    part_name,
    scan,
    write_current_part,
    write_part,
)
from kvl_cli.distributed.subtitles import subtitle_names
from kvl_cli.distributed.tally import Tally


def test_without_ray_installed_the_flag_says_how_to_get_it(kvl, scripted, images, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    for var in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        monkeypatch.setenv(var, os.environ.get(var, ""))  # --ray local sets them: put them back afterwards
    r = kvl("caption", "--ray", "local", images["jpg"], *scripted.args())
    assert r.code == 2
    assert "--ray needs Ray, which is not installed" in r.err
    assert "pip install 'kvl[ray]'" in r.err


@pytest.mark.parametrize("args, message", [
    (["caption", "--output", "out"], "--output works only with --ray"),
    (["caption", "--ray", "photo.jpg"], "is not a cluster address"),
    (["caption", "--ray", "auto", "--shard", "1/2"], "--shard is for machines without a cluster"),
    (["caption", "--ray", "auto", "--dry-run"], "--dry-run shows the prompt on this machine"),
    (["video", "--ray", "auto"], "captions scene by scene"),
    (["video", "--scenes", "--format", "srt", "--ray", "auto"], "give --output DIR"),
    (["video", "--skip-done", "out"], "--skip-done works only with --ray"),
    (["caption", "--workers", "3..2", "--ray", "auto"], "need 1 <= MIN <= MAX"),
])
def test_option_mistakes_are_usage_errors_before_any_cluster(kvl, images, args, message):
    r = kvl(*args, images["jpg"])
    assert r.code == 2, r.err
    assert message in r.err


def test_inputs_expand_once_each_with_their_errors(images, tmp_path):
    rows = list_inputs([str(images["jpg"]), str(images["jpg"]), str(tmp_path / "nope.jpg"), "-"], video=False)
    assert [r["key"] for r in rows] == [str(images["jpg"]), str(tmp_path / "nope.jpg"), "-"]
    assert rows[0]["path"] == str(images["jpg"])
    assert "file not found" in rows[1]["error"] and rows[1]["exit_code"] == 3
    assert "stdin cannot be sent to a cluster" in rows[2]["error"]


def test_a_directory_uri_is_listed_through_pyarrow(images):
    rows = list_inputs([f"file://{images['jpg'].parent}"], video=False)
    assert sorted(r["key"].rsplit("/", 1)[-1] for r in rows) == sorted(p.name for p in images.values())
    assert all(r["uri"].startswith("file://") for r in rows)


def _rec(label, ok=True):
    return {"input": label, "answer": "a", "finish_reason": "stop", "error": None} if ok else \
        {"input": label, "error": "bad", "exit_code": 3}


def test_a_part_is_named_by_its_inputs_so_a_rerun_batch_replaces_it(tmp_path):
    store = Store(str(tmp_path / "out"))
    store.ensure()
    name = write_part(store, [_rec("a"), _rec("b")])
    assert name == part_name(["b", "a"])
    assert write_part(store, [_rec("b"), _rec("a")]) == name  # the same batch again: the same file
    assert store.names() == [name]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp file left


def test_resume_drops_the_failed_records_that_run_again(tmp_path):
    store = Store(str(tmp_path / "out"))
    store.ensure()
    write_part(store, [_rec("a"), _rec("b", ok=False)])
    write_part(store, [_rec("c", ok=False)])
    done = scan(store)
    assert done.ok == {"a"} and set(done.failed) == {"b", "c"}
    assert drop_failed(store, done, {"b", "c"}) == 2
    lines = [json.loads(line) for n in store.names() for line in store.read(n).splitlines()]
    assert [r["input"] for r in lines] == ["a"]  # c's part held only c: gone


def test_a_zombie_worker_of_an_earlier_round_writes_nothing(tmp_path):
    """A node cut off from the cluster finishes its batch after the driver ran it again elsewhere."""
    store = Store(str(tmp_path / "out"))
    store.ensure()
    open_round(store, "run1 1")
    assert write_current_part(store, [_rec("a")], "run1 1")  # round 1's workers write while it lasts
    open_round(store, "run1 2")  # b and c were lost with a node: round 2 runs them again
    assert write_current_part(store, [_rec("b"), _rec("c")], "run1 2")
    assert write_current_part(store, [_rec("b"), _rec("c")], "run1 1") == ""  # the zombie of round 1
    close_rounds(store, "run1")
    assert write_current_part(store, [_rec("c")], "run1 2") == ""  # nor a worker of any round once it ended
    records = [json.loads(line) for n in store.names() for line in store.read(n).splitlines()]
    assert sorted(r["input"] for r in records) == ["a", "b", "c"]
    assert write_current_part(store, [_rec("d")], None)  # unfenced (the driver's own records)


def test_dedupe_keeps_one_record_per_key_a_successful_one(tmp_path):
    store = Store(str(tmp_path / "out"))
    store.ensure()
    write_part(store, [_rec("a", ok=False), _rec("b")])
    write_part(store, [_rec("a"), _rec("c")])  # a ran again after its failure, b twice (a zombie's part)
    write_part(store, [_rec("b"), _rec("d"), _rec("d")])
    assert dedupe(store) == 3
    records = [json.loads(line) for n in store.names() for line in store.read(n).splitlines()]
    assert sorted(r["input"] for r in records) == ["a", "b", "c", "d"]
    assert all(r["error"] is None for r in records)
    assert dedupe(store) == 0


def test_tally_knows_which_scenes_a_video_still_needs(tmp_path):
    rows = [{"key": "v.mp4", "path": "/v.mp4"}, {"key": "w.mp4", "path": "/w.mp4"}, {"key": "x.mp4", "path": "/x"}]
    tally = Tally.of(rows, video=True)
    assert tally.add("v.mp4#1", True, "v.mp4", 3) and tally.add("v.mp4#3", False, "v.mp4", 3, 3)
    assert not tally.add("v.mp4#1", True, "v.mp4", 3)  # a second record of a key is not counted
    assert tally.add("w.mp4", False, "w.mp4", 0, 3)  # the video failed as a whole
    missing = {r["key"]: r for r in tally.missing()}
    assert set(missing) == {"v.mp4", "x.mp4"}
    assert missing["v.mp4"]["skip"] == [1, 3] and missing["x.mp4"]["skip"] == []
    assert tally.exit_code() == 5


def test_tally_reads_the_records_a_lost_round_wrote(tmp_path):
    store = Store(str(tmp_path / "out"))
    store.ensure()
    write_part(store, [_rec("a"), _rec("zzz-other-run")])
    tally = Tally.of([{"key": "a"}, {"key": "b"}], video=False)
    assert tally.from_parts(store) == [True]
    assert [r["key"] for r in tally.missing()] == ["b"]


def test_subtitle_names_stay_apart_when_stems_collide():
    names = subtitle_names(["a/movie.mp4", "b/movie.mp4", "talk.webm"], "srt")
    assert names["talk.webm"] == "talk.srt"
    assert names["a/movie.mp4"] != names["b/movie.mp4"] and names["a/movie.mp4"].startswith("movie-")
