"""#18: kvl locate. Boxes (or points) in pixels of each original image as a person sees it: wide, tall,
EXIF-rotated and downscaled images; pipe lines `x0 y0 x1 y1 label`; --json objects; --draw the size of
the original; bad input exits before anything loads.

``grounder``: a scripted toy model (greedy) that thinks "some", then, under locate's constraint, answers
``{"objects":[{"label":"cat","bbox_2d":[0.25,1,1,1]}]}`` (``point_2d``: ``[0.25,1]``): 1 is the far edge of
what the model saw, so x1, y1 must be the original's width and height exactly, whatever the encoder's
canvas, padding, kvl's scaling or the EXIF orientation; 0.25 lands near a quarter of the width.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
from PIL import Image

from kvl_cli.media.geometry import ImageGeometry, encoder_canvas
from kvl_cli.run.locate import locate_schema

from .conftest import make_image

CHAIN = [("<|im_middle|>", "◁think▷"), ("◁think▷", " some"), (" some", "◁/"), ("◁/", "think▷"), ("[", "{"),
         ('"', "c"), ("c", "a"), ("a", "t"), ("t", '"'), ("0", "."), (".", "2"), ("2", "5"), ("5", ","), (",", "1"),
         ("1", "]"), ("}", "]")]


@pytest.fixture(scope="module")
def grounder(tmp_path_factory) -> list[str]:  # type: ignore[no-untyped-def]
    from kvl_cli.synthetic import write_projector
    from kvl_cli.synthetic.toy import write_text_model

    d = tmp_path_factory.mktemp("grounder")
    model = write_text_model(d / "grounder.gguf", chain=CHAIN)
    return ["--model", str(model), "--mmproj", str(write_projector(d / "mmproj.gguf")), "--temperature", "0"]


@pytest.fixture
def shots(tmp_path: Path) -> dict[str, Path]:
    """name -> image; their sizes as a person sees them are in SEEN."""
    d = tmp_path / "shots"
    d.mkdir()
    rotated = Image.new("RGB", (400, 300), (200, 100, 20))  # stored 400x300, shown 300x400 (EXIF orientation 6)
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(d / "rotated.jpg", exif=exif)
    return {"wide": make_image(d / "wide.png", size=(640, 200)), "tall": make_image(d / "tall.png", size=(150, 500)),
            "rotated": d / "rotated.jpg", "big": make_image(d / "big.jpg", size=(2400, 900), color=(10, 90, 200))}


SEEN = {"wide": (640, 200), "tall": (150, 500), "rotated": (300, 400), "big": (2400, 900)}
BOX_LINE = re.compile(r"^(\d+) (\d+) (\d+) (\d+) cat$")
POINT_LINE = re.compile(r"^(\d+) (\d+) cat$")


def _records(out: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.parametrize("name", sorted(SEEN))
def test_a_box_is_in_pixels_of_the_original_as_seen(kvl, grounder, shots, name):
    r = kvl("locate", shots[name], "the cat", *grounder, "--json", "--image-max-tokens", "64")
    assert r.code == 0, r.err
    rec = _records(r.out)[0]
    w, h = SEEN[name]
    (obj,) = rec["objects"]
    x0, y0, x1, y1 = obj["box"]
    assert (x1, y1) == (w, h) and y0 == h  # the answer's 1s are the original's far edges, EXIF orientation applied
    assert abs(x0 - w / 4) <= w * 0.08, (x0, w)  # a quarter across, give or take the encoder's padding
    assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h
    assert abs(obj["point"][0] - (x0 + x1) / 2) <= 1 and obj["point"][1] == h and obj["label"] == "cat"
    assert obj["box_norm"][2:] == [1.0, 1.0] and obj["box_norm"][0] == pytest.approx(x0 / w, abs=1 / w)
    assert rec["data"] == {"objects": [{"label": "cat", "bbox_2d": [0.25, 1, 1, 1]}]} and rec["thinking"] == "some"
    assert rec["query"] == "the cat" and rec["task"] == "locate"


def test_pipe_lines_one_per_object(kvl, grounder, shots):
    r = kvl("locate", shots["wide"], shots["rotated"], "the cat", *grounder)
    assert r.code == 0, r.err
    lines = [line for line in r.out.splitlines() if line and not line.startswith("==>")]
    assert [BOX_LINE.match(line) is not None for line in lines] == [True, True], r.out
    assert lines[1].endswith(" 300 400 cat")  # the rotated JPEG as a person sees it
    one = kvl("locate", shots["tall"], "the cat", *grounder)
    assert one.code == 0 and BOX_LINE.match(one.out.rstrip("\n")) and one.out.count("\n") == 1, one.out


def test_point_lines_feed_xdotool(kvl, grounder, shots):
    r = kvl("locate", "--point", shots["tall"], "the Save button", *grounder)
    assert r.code == 0, r.err
    m = POINT_LINE.match(r.out.rstrip("\n"))
    assert m and int(m.group(2)) == 500 and abs(int(m.group(1)) - 150 / 4) <= 12, r.out
    rec = _records(kvl("locate", "--point", shots["tall"], "the Save button", *grounder, "--json").out)[0]
    (obj,) = rec["objects"]
    assert obj["box"] is None and obj["box_norm"] is None and obj["point"] == [int(m.group(1)), 500]


def test_several_images_name_theirs_in_each_object(kvl, grounder, shots):
    recs = _records(kvl("locate", shots["wide"], shots["tall"], "the cat", *grounder, "--json").out)
    assert [rec["input"] for rec in recs] == [str(shots["wide"]), str(shots["tall"])]
    assert all(rec["objects"][0]["image"] == rec["input"] for rec in recs)


def test_the_image_tokens_match_the_canvas_kvl_maps_through(kvl, grounder, shots):
    """kvl's model of libmtmd's canvas gives the token count the encoder really used."""
    for name, budget in (("wide", 64), ("tall", 64), ("rotated", 256), ("big", 128), ("wide", 1024)):
        rec = _records(kvl("locate", shots[name], "the cat", *grounder, "--json", "--image-max-tokens",
                           str(budget)).out)[0]
        with Image.open(shots[name]) as img:
            decoded = _kvl_decoded_size(img.size if name != "rotated" else img.size[::-1], budget)
        cw, ch = encoder_canvas(*decoded, None, budget)
        assert rec["image_tokens"] == [cw // 28 * (ch // 28)], (name, budget, decoded, rec["image_tokens"])


def _kvl_decoded_size(size: tuple[int, int], budget: int) -> tuple[int, int]:
    w, h = size
    if w * h <= budget * 784:
        return w, h
    scale = (budget * 784 / (w * h)) ** 0.5
    return max(28, round(w * scale)), max(28, round(h * scale))


def test_geometry_undoes_the_padding():
    geo = ImageGeometry(source=(1000, 500), decoded=(100, 50), min_tokens=None, max_tokens=1024)
    assert geo.canvas == (112, 56)  # 100/28 = 3.57 -> 4 tiles; 50/28 = 1.79 -> 2
    assert geo.to_source(0, 0) == (0, 0) and geo.to_source(1, 1) == (1000, 500)
    left, top, nw, nh = geo.content
    assert (left, top) == (0, 0) and (nw, nh) == (112, 56)
    padded = ImageGeometry(source=(300, 400), decoded=(300, 400))
    assert padded.canvas == (308, 392) and padded.content == (7, 0, 294, 392)
    assert padded.to_source(7 / 308, 0.5) == (0.0, 200.0) and padded.to_source(0, 0) == (0.0, 0.0)


def test_draw_writes_the_original_size_never_over_an_input(kvl, grounder, shots, tmp_path):
    out = tmp_path / "drawn.png"
    r = kvl("locate", shots["rotated"], "the cat", *grounder, "--draw", out)
    assert r.code == 0, r.err
    with Image.open(out) as img:
        assert img.size == SEEN["rotated"]
        assert img.getpixel((299, 399)) != img.getpixel((150, 200))  # a box was drawn along the bottom edge
    folder = tmp_path / "boxes"
    folder.mkdir()
    r = kvl("locate", shots["wide"], shots["tall"], "the cat", *grounder, "--draw", folder)
    assert r.code == 0, r.err
    assert sorted(p.name for p in folder.iterdir()) == ["tall-boxes.png", "wide-boxes.png"]
    with Image.open(folder / "wide-boxes.png") as img:
        assert img.size == SEEN["wide"]
    before = shots["wide"].read_bytes()
    r = kvl("locate", shots["wide"], "the cat", "--model", "/nonexistent.gguf", "--draw", shots["wide"])
    assert r.code == 2 and "is an input" in r.err and shots["wide"].read_bytes() == before, r.err


@pytest.mark.parametrize("args, words", [
    (["--draw", "/nonexistent/dir/x.png"], "does not exist"),
    (["--draw", "/nonexistent/dir/"], "no such folder"),
    (["--draw", "out.notanimage"], "not an image format"),
    (["--schema", '{"type": "object"}'], "shapes its own answer"),
])
def test_bad_flags_exit_2_before_anything_loads(kvl, shots, args, words):
    r = kvl("locate", shots["wide"], "the cat", "--model", "/nonexistent.gguf", *args)
    assert r.code == 2 and words in r.err and len(r.err.splitlines()) == 1, r.err


def test_several_images_need_a_folder_to_draw_into(kvl, shots, tmp_path):
    r = kvl("locate", shots["wide"], shots["tall"], "x", "--model", "/nonexistent.gguf", "--draw", tmp_path / "a.png")
    assert r.code == 2 and "no such folder" in r.err, r.err


@pytest.mark.parametrize("query", ["", "   "])
def test_an_empty_query_is_exit_2(kvl, shots, query):
    r = kvl("locate", shots["wide"], query, "--model", "/nonexistent.gguf")
    assert r.code == 2 and "no query" in r.err, r.err


def test_one_argument_is_not_enough(kvl, shots):
    r = kvl("locate", "the cat", "--model", "/nonexistent.gguf")
    assert r.code == 2 and "give the images" in r.err, r.err


def test_an_unreadable_image_fails_in_its_place(kvl, grounder, shots, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    r = kvl("locate", shots["wide"], broken, shots["tall"], "the cat", *grounder, "--json")
    assert r.code == 5, r.err
    recs = _records(r.out)
    assert [rec["input"] for rec in recs] == [str(shots["wide"]), str(broken), str(shots["tall"])]
    assert recs[1]["exit_code"] == 3 and "objects" in recs[0] and "objects" in recs[2]
    alone = kvl("locate", broken, "the cat", *grounder)
    assert alone.code == 3 and alone.out == "", alone.err


def test_a_random_model_always_answers_in_shape(kvl, random_pair, shots):
    for name in ("wide", "rotated"):
        for seed in range(3):
            r = kvl("locate", shots[name], "the cat", *random_pair.args(), "--temperature", "1", "--seed", str(seed),
                    "--think-budget", "8", "--max-tokens", "600", "--image-max-tokens", "32", "--json")
            assert r.code == 0, r.err
            rec = _records(r.out)[0]
            jsonschema.validate(rec["data"], locate_schema(False).schema)
            w, h = SEEN[name]
            for obj in rec["objects"]:
                x0, y0, x1, y1 = obj["box"]
                assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h


def test_nothing_found_is_no_line(kvl, random_pair, shots):
    r = kvl("locate", shots["wide"], "the cat", *random_pair.args(), "--temperature", "1", "--seed", "1",
            "--think-budget", "8", "--image-max-tokens", "32")
    assert r.code == 0 and r.out == "", (r.out, r.err)  # the toy answers {"objects": []}


def test_dry_run_shows_the_prompt_and_the_constraint(kvl, grounder, shots):
    r = kvl("locate", "--point", shots["wide"], "the Save button", *grounder, "--dry-run")
    assert r.code == 0, r.err
    assert "Locate in this image: the Save button." in r.out and '"point_2d": [x, y]' in r.out
    assert "constraint=<json_schema" in r.out


def test_sidecar_json_keeps_the_objects(kvl, grounder, shots):
    r = kvl("locate", shots["wide"], "the cat", *grounder, "--sidecar", "json")
    assert r.code == 0, r.err
    side = json.loads(shots["wide"].with_suffix(".json").read_text())
    assert side["objects"][0]["box"][2:] == [640, 200]


def test_the_library_face(grounder, shots):
    import kvl_cli

    model, mmproj = grounder[1], grounder[3]
    with kvl_cli.open(model=model, mmproj=mmproj, cache=False) as k:
        (a,) = k.locate([shots["rotated"]], "the cat", temperature=0)
        assert a.ok and a.meta["objects"][0]["box"][2:] == [300, 400]
        (p,) = k.locate([shots["tall"]], "the cat", point=True, temperature=0)
        assert p.meta["objects"][0]["point"][1] == 500


def test_a_running_server_answers_it(kvl, grounder, shots, tmp_path, monkeypatch):
    from .conftest import Pair
    from .serve_util import start_server

    srv = start_server(Pair(Path(grounder[1]), Path(grounder[3])), tmp_path / "srv", "--image-max-tokens", "2048")
    try:
        monkeypatch.setenv("KVL_HOME", str(srv.home / "kvl"))
        r = kvl("locate", shots["rotated"], "the cat", *grounder, "--json")
        assert r.code == 0, r.err
        rec = _records(r.out)[0]
        assert rec["server"] == srv.url and rec["objects"][0]["box"][2:] == [300, 400]
    finally:
        srv.stop()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_ray_one_image_per_row(grounder, shots, tmp_path):
    import subprocess
    import sys

    from .conftest import REPO, kvl_env

    env = kvl_env(None, KVL_HOME=str(tmp_path / "kvl"), HOME=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "kvl_cli", "locate", str(shots["rotated"]), str(tmp_path / "gone.png"),
                           "the cat", *grounder, "--ray", "local", "--json"], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 5, proc.stderr
    recs = {r["input"]: r for r in _records(proc.stdout)}
    assert recs[str(shots["rotated"])]["objects"][0]["box"][2:] == [300, 400]
    assert recs[str(tmp_path / "gone.png")]["exit_code"] == 3
    r = subprocess.run([sys.executable, "-m", "kvl_cli", "locate", str(shots["wide"]), "x", "--ray", "local", "--draw",
                        str(tmp_path / "a.png"), "--model", "/nonexistent.gguf"], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=60)
    assert r.returncode == 2 and "--draw" in r.stderr, r.stderr


def test_a_terminal_gets_the_thinking_then_a_table(grounder, shots, tmp_path):
    import sys

    from .conftest import kvl_env
    from .terminal import in_terminal

    env = kvl_env(None, KVL_HOME=str(tmp_path / "kvl"), HOME=str(tmp_path), COLUMNS="100")
    code, raw = in_terminal([sys.executable, "-m", "kvl_cli", "locate", str(shots["rotated"]), "the cat", *grounder],
                            env, timeout=120)
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", raw.decode("utf-8", "replace"))  # colours and cursor moves off
    assert code == 0, text
    assert "thought for" in text  # the thinking, collapsed once the answer came, as ask shows it
    row = next(line for line in text.splitlines() if "cat" in line and "300" in line)
    assert re.search(r"1\D+cat\D+71\D+400\D+300\D+400", row), row  # the table: #, label, x0 y0 x1 y1
    assert not re.search(r"^71 400 300 400 cat", text, re.M)  # not the pipe's lines
