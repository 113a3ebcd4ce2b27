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
])
def test_bad_flags_exit_2_before_anything_loads(kvl, shots, args, words):
    r = kvl("locate", shots["wide"], "the cat", "--model", "/nonexistent.gguf", *args)
    assert r.code == 2 and words in r.err and len(r.err.splitlines()) == 1, r.err


def test_schema_and_choices_are_not_locate_flags(kvl, shots):
    r = kvl("locate", shots["wide"], "the cat", "--model", "/nonexistent.gguf", "--schema", '{"type": "object"}')
    assert r.code == 2 and "No such option '--schema'" in r.err, r.err


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


@pytest.fixture(scope="module")
def talkative(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A random toy (another seed than the suite's) that answers with many objects, its coordinates noise."""
    from kvl_cli.synthetic import write_toy_pair

    model, mmproj = write_toy_pair(tmp_path_factory.mktemp("talkative"), scripted=False, seed=11)
    return ["--model", str(model), "--mmproj", str(mmproj), "--temperature", "1", "--image-max-tokens", "32"]


def test_random_boxes_are_well_formed_and_inside_each_original(kvl, talkative, shots, tmp_path):
    names = ["wide", "tall", "rotated"]
    r = kvl("locate", *(shots[n] for n in names), "the cat", *talkative, "--seed", "1", "--json",
            "--draw", tmp_path)
    assert r.code == 0, r.err
    recs = _records(r.out)
    assert sum(len(rec["objects"]) for rec in recs) >= 3  # this toy does answer with boxes
    for name, rec in zip(names, recs, strict=True):
        w, h = SEEN[name]
        for obj in rec["objects"]:
            x0, y0, x1, y1 = obj["box"]
            assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h, (name, obj)
            assert obj["image"] == rec["input"] and "\n" not in obj["label"]
        with Image.open(tmp_path / f"{shots[name].stem}-boxes{shots[name].suffix}") as drawn:
            assert drawn.size == (w, h)
    pipe = kvl("locate", shots["tall"], "the cat", *talkative, "--seed", "1")
    lines = pipe.out.splitlines()
    assert pipe.code == 0 and lines and all(re.match(r"^\d+ \d+ \d+ \d+ \S", line) for line in lines), pipe.out


def test_nothing_found_is_no_line(kvl, random_pair, shots):
    r = kvl("locate", shots["wide"], "the cat", *random_pair.args(), "--temperature", "1", "--seed", "1",
            "--think-budget", "8", "--image-max-tokens", "32")
    assert r.code == 0 and r.out == "", (r.out, r.err)  # the toy answers {"objects": []}


def test_dry_run_shows_the_prompt_and_the_constraint(kvl, grounder, shots):
    r = kvl("locate", "--point", shots["wide"], "the Save button", *grounder, "--dry-run")
    assert r.code == 0, r.err
    assert "Locate in this image: the Save button." in r.out and '"point_2d": [x, y]' in r.out
    assert "constraint=<grammar" in r.out


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
        (p,) = k.locate([shots["tall"]], "the cat", point=True, temperature=0, draw=shots["tall"].with_name("t.png"))
        assert p.meta["objects"][0]["point"][1] == 500
    with Image.open(shots["tall"].with_name("t.png")) as drawn:
        assert drawn.size == SEEN["tall"]


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


def test_a_label_stays_one_line_in_every_form(tmp_path):
    from kvl_cli.run.draw import draw_objects
    from kvl_cli.run.locate import Located, markdown_table, pipe_lines

    hostile = Located("a\nb \x1b[2J|猫", (5, 6), (0.1, 0.2), (1, 2, 9, 10), (0.0, 0.0, 0.1, 0.1))
    line = pipe_lines([hostile])
    assert "\n" not in line and "\x1b" not in line and line.startswith("1 2 9 10 a")
    table = markdown_table([hostile])
    assert len(table.splitlines()) == 3 and "\x1b" not in table and table.splitlines()[2].count("|") == 7
    img = draw_objects(make_image(tmp_path / "p.png", size=(50, 40)), [hostile.record()], "p.png")
    assert img.size == (50, 40)


# -- a hostile tester's findings (#18, second round) ---------------------------------------------------

NO_MODEL = ["--model", "/nonexistent.gguf"]


def test_draw_never_writes_through_a_hard_link_to_an_input(kvl, shots, tmp_path):
    hard = tmp_path / "hard.png"
    hard.hardlink_to(shots["wide"])
    before = shots["wide"].read_bytes()
    r = kvl("locate", shots["wide"], "the cat", *NO_MODEL, "--draw", hard)
    assert r.code == 2 and "is an input" in r.err and shots["wide"].read_bytes() == before, r.err
    link = tmp_path / "soft.png"
    link.symlink_to(shots["wide"])
    r = kvl("locate", shots["wide"], "the cat", *NO_MODEL, "--draw", link)
    assert r.code == 2 and "is an input" in r.err, r.err


def test_a_drawing_replaces_its_name_not_a_file_linked_to_it(kvl, grounder, shots, tmp_path):
    keep = make_image(tmp_path / "keep.png", size=(20, 20))  # not an input: someone's file, linked to the name
    before = keep.read_bytes()
    out = tmp_path / "out.png"
    out.hardlink_to(keep)
    r = kvl("locate", shots["tall"], "the cat", *grounder, "--draw", out)
    assert r.code == 0, r.err
    assert keep.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        "keep.png", "out.png"]
    with Image.open(out) as img:
        assert img.size == SEEN["tall"]


def test_a_pdf_and_a_multi_page_tiff_are_located_page_by_page(kvl, grounder, tmp_path):
    from .pdfs import PageSpec, write_pdf

    pdf = write_pdf(tmp_path / "doc.pdf", [PageSpec(300, 200, text="one"), PageSpec(200, 300, text="two")])
    frames = [Image.new("RGB", (120, 80), (200, 0, 0)), Image.new("RGB", (60, 90), (0, 0, 200))]
    tiff = tmp_path / "fax.tiff"
    frames[0].save(tiff, save_all=True, append_images=frames[1:])
    drawn = tmp_path / "drawn"
    drawn.mkdir()
    r = kvl("locate", pdf, tiff, "the cat", *grounder, "--json", "--dpi", "72", "--draw", drawn)
    assert r.code == 0, r.err
    recs = _records(r.out)
    assert [(Path(x["input"]).name, x["page"], x["pages"]) for x in recs] == [
        ("doc.pdf", 1, 2), ("doc.pdf", 2, 2), ("fax.tiff", 1, 2), ("fax.tiff", 2, 2)]
    # each box in the pixels of its page as rendered (72 dpi: a point is a pixel; a TIFF's frame: its own)
    sizes = [(300, 200), (200, 300), (120, 80), (60, 90)]
    assert [tuple(x["objects"][0]["box"][2:]) for x in recs] == sizes
    names = ["doc-p1-boxes.png", "doc-p2-boxes.png", "fax-p1-boxes.png", "fax-p2-boxes.png"]
    assert sorted(p.name for p in drawn.iterdir()) == names
    for name, size in zip(names, sizes, strict=True):
        with Image.open(drawn / name) as img:
            assert img.size == size
    pipe = kvl("locate", pdf, "the cat", *grounder, "--dpi", "72", "--pages", "2")
    assert pipe.code == 0 and pipe.out.strip().endswith("200 300 cat"), (pipe.out, pipe.err)
    one = tmp_path / "p2.jpg"  # a PDF on stdin, one page drawn into a file
    piped = kvl("locate", "-", "the cat", *grounder, "--dpi", "72", "--pages", "2", "--draw", one,
                stdin=pdf.read_bytes())
    assert piped.code == 0 and piped.out.strip().endswith("200 300 cat"), (piped.out, piped.err)
    with Image.open(one) as img:
        assert img.size == (200, 300)


def test_skip_done_is_for_the_same_query_and_mode(kvl, grounder, shots, tmp_path):
    results = tmp_path / "out.jsonl"
    r = kvl("locate", shots["wide"], "the cat", *grounder, "--json")
    assert r.code == 0, r.err
    results.write_text(r.out)
    again = kvl("locate", shots["wide"], "the cat", *grounder, "--json", "--skip-done", results)
    assert again.code == 0 and again.out == "" and "already done" in again.err, again.err
    other = kvl("locate", shots["wide"], "the dog", *grounder, "--json", "--skip-done", results)
    assert other.code == 0 and _records(other.out)[0]["query"] == "the dog", other.err
    point = kvl("locate", "--point", shots["wide"], "the cat", *grounder, "--json", "--skip-done", results)
    assert point.code == 0, point.err
    (rec,) = _records(point.out)
    assert rec["point"] is True and rec["objects"][0]["box"] is None


@pytest.mark.parametrize("name, words", [
    ("", "needs a file or folder name"),
    ("out.xbm", "not an image format"),
    ("out.msp", "not an image format"),
    ("out.palm", "not an image format"),
    ("out.ico", "not an image format"),
])
def test_draw_names_that_cannot_hold_the_drawing_exit_2_up_front(kvl, shots, tmp_path, monkeypatch, name, words):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    r = kvl("locate", shots["wide"], "the cat", *NO_MODEL, "--draw", name)
    assert r.code == 2 and words in r.err and len(r.err.splitlines()) == 1, r.err
    assert list(here.iterdir()) == []


def test_locating_a_folder_again_replaces_kvls_drawings(kvl, grounder, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    make_image(d / "small.png", size=(50, 40))
    make_image(d / "photo.jpg", size=(40, 50))
    make_image(d / "web.webp", size=(30, 20))
    for _ in range(2):
        r = kvl("locate", d, "the cat", *grounder, "--json", "--draw", d)
        assert r.code == 0, r.err
        assert sorted(Path(x["input"]).name for x in _records(r.out)) == ["photo.jpg", "small.png", "web.webp"]
    assert sorted(p.name for p in d.iterdir()) == ["photo-boxes.jpg", "photo.jpg", "small-boxes.png", "small.png",
                                                  "web-boxes.webp", "web.webp"]
    # someone's own file named like a drawing is still an input, and never written over
    make_image(d / "mine-boxes.png", size=(30, 30))
    r = kvl("locate", d, "the cat", *grounder, "--json", "--draw", d)
    assert r.code == 0 and len(_records(r.out)) == 4, r.err
    assert (d / "mine-boxes-boxes.png").exists()


def test_draw_rereads_within_kvls_pixel_limit(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    from kvl_cli.errors import DiskError
    from kvl_cli.run.draw import draw_objects

    src = make_image(tmp_path / "big.png", size=(300, 200))
    obj = {"label": "cat", "box": [10, 10, 100, 100], "point": [55, 55]}
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)  # stands for Pillow's own limit, below kvl's
    monkeypatch.setenv("KVL_MAX_IMAGE_PIXELS", "100000")
    assert draw_objects(src, [obj], "big.png").size == (300, 200)
    monkeypatch.setenv("KVL_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(DiskError) as err:  # the answers stand: a drawing not made is exit 7, not "nothing ran"
        draw_objects(src, [obj], "big.png")
    assert err.value.exit_code == 7 and "draw" in str(err.value)


def test_a_16_bit_png_is_drawn_in_its_greys(tmp_path):
    from kvl_cli.run.draw import draw_objects

    src = tmp_path / "deep.png"
    Image.new("I;16", (60, 40), 30000).save(src)
    img = draw_objects(src, [{"label": "cat", "box": [40, 30, 50, 35], "point": [45, 32]}], "deep.png")
    r, g, b = img.getpixel((5, 5))
    assert r == g == b and abs(r - 30000 * 255 // 65535) <= 1, (r, g, b)



def test_a_default_server_answers_locate_at_its_budget_only(kvl, grounder, shots, tmp_path, monkeypatch):
    """docs/locate.md's caveat: locate asks for 2048 image tokens, a default `kvl serve` allows 1024."""
    from .conftest import Pair
    from .serve_util import start_server

    srv = start_server(Pair(Path(grounder[1]), Path(grounder[3])), tmp_path / "srv")
    try:
        monkeypatch.setenv("KVL_HOME", str(srv.home / "kvl"))
        own = _records(kvl("locate", shots["wide"], "the cat", *grounder, "--json").out)[0]
        assert "server" not in own and own["objects"][0]["box"][2:] == [640, 200]
        r = kvl("locate", shots["wide"], "the cat", *grounder, "--json", "--image-max-tokens", "1024")
        assert r.code == 0, r.err
        rec = _records(r.out)[0]
        assert rec["server"] == srv.url and rec["objects"][0]["box"][2:] == [640, 200]
    finally:
        srv.stop()


def test_each_page_is_mapped_through_its_own_geometry():
    """A document's pages share its label: a page whose answer never comes (it failed in the engine)
    must not lend its geometry to the next page's boxes."""
    from collections import deque

    from kvl_cli.engine.types import FinishReason, Result, Timings, Tokens
    from kvl_cli.run.locate import LocateGate

    gate = LocateGate(point=False)
    gate.geometry[("doc.pdf", 1)] = deque([ImageGeometry(source=(100, 100), decoded=(100, 100))])
    gate.geometry[("doc.pdf", 2)] = deque([ImageGeometry(source=(400, 200), decoded=(400, 200))])
    answer = '{"objects": [{"label": "cat", "bbox_2d": [0, 0, 1, 1]}]}'
    result = Result(answer, "", FinishReason.STOP, Tokens(), Timings(), [])
    _, _, extra = gate.check(result, "doc.pdf", 2)  # page 1 failed: its answer never reaches the gate
    assert extra["objects"][0]["box"] == [0, 0, 400, 200]
