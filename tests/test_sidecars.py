"""--sidecar txt|json|xmp for caption and ocr: beside each input or under --sidecar-dir, written
atomically, the image untouched, an existing XMP merged (a photographer's fields kept), the sidecar as
the resume mark, --overwrite; on the real engine with the scripted toy model."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvl_cli.sidecars import xmp
from kvl_cli.synthetic import SCRIPTED_ANSWER

from .conftest import make_image
from .kvlrun import records

NS = {"rdf": xmp.RDF, "dc": xmp.DC, "kvl": xmp.KVL, "xmp": "http://ns.adobe.com/xap/1.0/",
      "lr": "http://ns.adobe.com/lightroom/1.0/"}
LANG = f"{{{xmp.XML}}}lang"
# as Lightroom and digiKam write them: the rating as an attribute, keywords in a Bag, a hierarchical
# subject in another namespace, a description in two languages
PHOTOGRAPHER = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 7.0">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/" xmp:Rating="5" xmp:Label="Red">
   <dc:subject><rdf:Bag><rdf:li>cat</rdf:li><rdf:li>window</rdf:li></rdf:Bag></dc:subject>
   <lr:hierarchicalSubject><rdf:Bag><rdf:li>Animals|Cats</rdf:li></rdf:Bag></lr:hierarchicalSubject>
   <dc:description><rdf:Alt>
     <rdf:li xml:lang="x-default">my own words</rdf:li><rdf:li xml:lang="de">meine Worte</rdf:li>
   </rdf:Alt></dc:description>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""


def digest(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def description(root: ET.Element) -> dict[str, str]:
    return {li.get(LANG, ""): li.text or "" for li in root.iterfind(".//dc:description/rdf:Alt/rdf:li", NS)}


def test_sidecars_beside_each_input_then_the_rerun_skips_them(kvl, scripted, photos):
    many = photos(2)
    before = [digest(p) for p in many]
    r = kvl("caption", *many, *scripted.args(), "--json", "--sidecar", "txt", "--sidecar", "json", "--sidecar", "xmp")
    assert r.code == 0, r.err
    for p in map(Path, many):
        assert p.with_suffix(".txt").read_text() == SCRIPTED_ANSWER + "\n"
        rec = json.loads(p.with_suffix(".json").read_text())
        assert rec["input"] == str(p) and rec["answer"] == SCRIPTED_ANSWER and rec["task"] == "caption"
        assert rec["model"] == scripted.model.name and rec["date"].endswith("Z") and rec["error"] is None
        root = ET.parse(p.with_suffix(".xmp")).getroot()
        assert description(root) == {"x-default": SCRIPTED_ANSWER}
        assert root.findtext(".//kvl:task", namespaces=NS) == "caption"
        assert root.findtext(".//kvl:model", namespaces=NS) == scripted.model.name
    assert [digest(p) for p in many] == before  # the images themselves are never written
    assert not [f for f in Path(many[0]).parent.iterdir() if f.name.startswith(".")]  # no temporary left
    assert oct(Path(many[0]).with_suffix(".txt").stat().st_mode & 0o777) != oct(0o600)  # the umask's, not mkstemp's

    again = kvl("caption", *many, *scripted.args(), "--json", "--sidecar", "txt", "--sidecar", "xmp")
    assert again.code == 0 and again.out == ""
    assert "skipping 2 with their sidecars already written" in again.err
    # one sidecar missing: that input runs again; --overwrite runs them all
    Path(many[1]).with_suffix(".xmp").unlink()
    r = kvl("caption", *many, *scripted.args(), "--json", "--sidecar", "txt", "--sidecar", "xmp")
    assert [x["input"] for x in records(r.out)] == [many[1]]
    r = kvl("caption", *many, *scripted.args(), "--json", "--sidecar", "xmp", "--overwrite")
    assert [x["input"] for x in records(r.out)] == many


def test_an_xmp_sidecar_of_another_task_is_not_a_resume_mark_nor_replaced(kvl, scripted, photos):
    [photo] = photos(1)
    assert kvl("caption", photo, *scripted.args(), "--sidecar", "xmp").code == 0
    before = Path(photo).with_suffix(".xmp").read_bytes()
    r = kvl("ocr", photo, *scripted.args(), "--json", "--sidecar", "xmp")  # not skipped, and not replaced either
    [rec] = records(r.out)
    assert r.code == 3 and rec["exit_code"] == 3
    assert "holds kvl's caption" in rec["error"] and "--overwrite" in rec["error"]
    assert Path(photo).with_suffix(".xmp").read_bytes() == before
    r = kvl("ocr", photo, *scripted.args(), "--json", "--sidecar", "xmp", "--overwrite")
    assert [x["input"] for x in records(r.out)] == [photo] and r.code == 0
    root = ET.parse(Path(photo).with_suffix(".xmp")).getroot()
    assert root.findtext(".//kvl:task", namespaces=NS) == "ocr"
    assert len(root.findall(".//kvl:task", NS)) == 1 and description(root) == {"x-default": SCRIPTED_ANSWER}


def test_sidecar_dir_mirrors_the_input_tree(kvl, scripted, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "media" / "2024").mkdir(parents=True)
    make_image(tmp_path / "media" / "2024" / "a.jpg")
    make_image(tmp_path / "media" / "b.png")
    outside = tmp_path.parent / f"{tmp_path.name}-elsewhere.png"
    make_image(outside)
    r = kvl("caption", "media", str(outside), *scripted.args(), "--sidecar", "txt", "--sidecar-dir", "caps")
    assert r.code == 0, r.err
    assert (tmp_path / "caps" / "media" / "2024" / "a.txt").read_text() == SCRIPTED_ANSWER + "\n"
    assert (tmp_path / "caps" / "media" / "b.txt").is_file()
    assert (tmp_path / "caps" / str(outside.with_suffix(".txt")).lstrip("/")).is_file()  # absolute: under DIR
    assert sorted(f.name for f in (tmp_path / "media").iterdir()) == ["2024", "b.png"]  # nothing written beside
    r = kvl("caption", "media", *scripted.args(), "--sidecar", "txt", "--sidecar-dir", "caps")
    assert r.code == 0 and "skipping 2" in r.err
    outside.unlink()


def test_xmp_merge_keeps_the_photographers_fields(kvl, scripted, photos):
    [photo] = photos(1)
    side = Path(photo).with_suffix(".xmp")
    side.write_text(PHOTOGRAPHER)
    for _ in range(2):  # merged twice: kvl's fields replaced, never repeated
        r = kvl("caption", photo, *scripted.args(), "--sidecar", "xmp", "--overwrite")
        assert r.code == 0, r.err
    text = side.read_text()
    assert text.startswith("<?xpacket begin=") and text.rstrip().endswith('<?xpacket end="w"?>')
    root = ET.fromstring(text.split("?>", 1)[1].rsplit("<?xpacket", 1)[0])
    desc = root.find(".//rdf:Description", NS)
    assert desc is not None and desc.get(f"{{{NS['xmp']}}}Rating") == "5" and desc.get(f"{{{NS['xmp']}}}Label") == "Red"
    assert [li.text for li in root.iterfind(".//dc:subject/rdf:Bag/rdf:li", NS)] == ["cat", "window"]
    assert [li.text for li in root.iterfind(".//lr:hierarchicalSubject/rdf:Bag/rdf:li", NS)] == ["Animals|Cats"]
    assert description(root) == {"x-default": SCRIPTED_ANSWER, "de": "meine Worte"}
    assert [e.text for e in root.iterfind(".//kvl:task", NS)] == ["caption"]
    assert 'xmlns:lr="http://ns.adobe.com/lightroom/1.0/"' in text  # the file's own prefixes kept


def test_merge_unit_cases():
    # a description written as an attribute becomes a language alternative; other attributes stay
    data = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            b'<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" dc:description="old" '
            b'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="2"/></rdf:RDF></x:xmpmeta>')
    out = xmp.merge(data, "new <caption> & more", {"task": "caption", "model": "m"})
    root = ET.fromstring(out.decode().split("?>", 1)[1].rsplit("<?xpacket", 1)[0])
    assert description(root) == {"x-default": "new <caption> & more"}
    assert root.find(".//rdf:Description", NS).get(f"{{{NS['xmp']}}}Rating") == "2"  # type: ignore[union-attr]
    assert xmp.kvl_task(out) == "caption"
    # a new sidecar; and what does not parse is refused, not replaced
    assert xmp.kvl_task(xmp.merge(None, "x", {"task": "ocr"})) == "ocr"
    with pytest.raises(xmp.XmpError):
        xmp.merge(b"<x:xmpmeta><rdf:RDF>", "x", {"task": "ocr"})
    with pytest.raises(xmp.XmpError):
        xmp.merge(b"<html><body/></html>", "x", {"task": "ocr"})


HEAD = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description>')
TAIL = b"</rdf:Description></rdf:RDF></x:xmpmeta>"


def test_a_hostile_xmp_is_refused_not_expanded():
    external = b'<!DOCTYPE r [<!ENTITY e SYSTEM "file:///etc/passwd">]>' + HEAD + b"&e;" + TAIL
    with pytest.raises(xmp.XmpError, match="undefined entity"):
        xmp.merge(external, "x", {"task": "caption"})
    import pyexpat

    if tuple(int(n) for n in pyexpat.EXPAT_VERSION.split("_")[1].split(".")) < (2, 4):
        pytest.skip("this expat has no limit on entity amplification (2.4+ has)")
    entities = b"".join(b'<!ENTITY l%d "%s">' % (i, (b"&l%d;" % (i - 1)) * 10) for i in range(1, 10))
    bomb = b'<!DOCTYPE r [<!ENTITY l0 "lol">' + entities + b"]>" + HEAD + b"&l9;" + TAIL
    with pytest.raises(xmp.XmpError, match="amplification"):
        xmp.merge(bomb, "x", {"task": "caption"})


def test_a_damaged_xmp_is_left_alone_and_the_input_fails(kvl, scripted, photos):
    many = photos(2)
    bad = Path(many[0]).with_suffix(".xmp")
    bad.write_text("<x:xmpmeta><rdf:RDF>cut sh")
    r = kvl("caption", *many, *scripted.args(), "--json", "--sidecar", "xmp")
    assert r.code == 5
    first, second = records(r.out)
    assert first["input"] == many[0] and "is not XMP kvl can merge into" in first["error"] and first["exit_code"] == 3
    assert second["input"] == many[1] and second["answer"] == SCRIPTED_ANSWER
    assert bad.read_text() == "<x:xmpmeta><rdf:RDF>cut sh"


def test_a_sidecar_that_cannot_be_written_fails_its_input_only(kvl, scripted, photos):
    many = photos(2)
    Path(many[0]).with_suffix(".txt").mkdir()  # a folder where the sidecar would go
    r = kvl("caption", *many, *scripted.args(), "--sidecar", "txt")
    assert r.code == 5
    assert f"kvl: error: {many[0]}: cannot write" in r.err and "--sidecar-dir" in r.err
    assert Path(many[1]).with_suffix(".txt").read_text() == SCRIPTED_ANSWER + "\n"


@pytest.mark.parametrize(("args", "message"), [
    (["--sidecar", "txt", "-"], "stdin has no name"),
    (["--sidecar", "txt", "http://example.invalid/a.jpg"], "add --sidecar-dir DIR"),
    (["--sidecar-dir", "out", "x.jpg"], "--sidecar-dir works only with --sidecar"),
    (["--overwrite", "x.jpg"], "--overwrite works only with --sidecar"),
    (["--sidecar", "tiff", "x.jpg"], "'tiff' is not one of"),
])
def test_sidecar_usage_errors(kvl, scripted, args, message):
    r = kvl("caption", *args, *scripted.args(), stdin=b"")
    assert r.code == 2 and message in r.err and "Traceback" not in r.err


def test_two_inputs_with_one_sidecar_name_are_refused_before_the_model_loads(kvl, scripted, tmp_path):
    a, b = make_image(tmp_path / "a.jpg"), make_image(tmp_path / "a.png")
    r = kvl("caption", a, b, "--model", tmp_path / "missing.gguf", "--sidecar", "txt")
    assert r.code == 2 and "would both write" in r.err and str(tmp_path / "a.txt") in r.err


def test_ocr_text_goes_into_the_description(kvl, scripted, photos):
    [photo] = photos(1)
    r = kvl("ocr", photo, *scripted.args(), "--sidecar", "xmp", "--sidecar", "txt")
    assert r.code == 0, r.err
    root = ET.parse(Path(photo).with_suffix(".xmp")).getroot()
    assert description(root) == {"x-default": SCRIPTED_ANSWER}
    assert root.findtext(".//kvl:task", namespaces=NS) == "ocr"


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="needs exiftool (apt-get install libimage-exiftool-perl)")
def test_exiftool_reads_the_merged_sidecar(kvl, scripted, photos):
    [photo] = photos(1)
    side = Path(photo).with_suffix(".xmp")
    side.write_text(PHOTOGRAPHER)
    assert kvl("caption", photo, *scripted.args(), "--sidecar", "xmp").code == 0
    out = subprocess.run(["exiftool", "-json", "-G1", str(side)], capture_output=True,
                         text=True, check=True).stdout
    tags = json.loads(out)[0]
    assert tags["XMP-xmp:Rating"] == 5 and tags["XMP-xmp:Label"] == "Red"
    assert tags["XMP-dc:Subject"] == ["cat", "window"]
    assert tags["XMP-dc:Description"] == SCRIPTED_ANSWER and tags["XMP-dc:Description-de"] == "meine Worte"
    assert tags["XMP-kvl:Task"] == "caption" and tags["XMP-kvl:Model"] == scripted.model.name


def test_where_a_sidecar_goes(tmp_path, monkeypatch):
    from kvl_cli.errors import UsageError
    from kvl_cli.sidecars import sidecar_path

    monkeypatch.chdir(tmp_path)
    assert sidecar_path("photos/./a.jpg", "txt", None) == Path("photos/a.txt")
    assert sidecar_path("~/p/a.jpg", "txt", None) == Path.home() / "p" / "a.txt"  # quoted, or from --from: not ./~/
    assert sidecar_path("photos/scan", "json", None) == Path("photos/scan.json")  # no suffix: one added
    assert sidecar_path("photos/a.jpg", "xmp", "out") == Path("out/photos/a.xmp")
    assert sidecar_path("/srv/media/a.jpg", "txt", "out") == Path("out/srv/media/a.txt")
    assert sidecar_path("https://example.org/img/../a%2Fb.png?x=1", "txt", "out") == Path("out/example.org/img/a/b.txt")
    assert sidecar_path("s3://bucket/p/c.jpg", "txt", "out") == Path("out/bucket/p/c.txt")
    for label in ("-", "https://example.org/a.png", "s3://bucket/c.jpg"):
        with pytest.raises(UsageError):
            sidecar_path(label, "txt", None)


# ---- hostile input (issue 21's follow-up) ------------------------------------------------------------------


def result(answer: str):  # type: ignore[no-untyped-def]
    from kvl_cli.engine.types import FinishReason, Result, Timings, Tokens

    return Result(answer, "", FinishReason.STOP, Tokens(), Timings(), [])


def test_control_characters_and_lone_surrogates_never_make_an_unreadable_sidecar(tmp_path):
    from kvl_cli.options import SidecarOptions
    from kvl_cli.sidecars import SidecarWriter

    photo = make_image(tmp_path / "a.png")
    writer = SidecarWriter(SidecarOptions(("xmp", "txt", "json")), "ocr")
    hostile = "TOTAL\x00 12\x01\x08\x0b\x0c\x1b[2J \ud800 done\ufffe\tend\r\nnext \U0001f600"
    for answer in (hostile, hostile + " again"):  # written, then merged into again: kvl reads its own sidecar
        writer.write(str(photo), result(answer), {"model": "toy\x07"})
    text = photo.with_suffix(".xmp").read_bytes()
    root = ET.fromstring(text.split(b"?>", 1)[1].rsplit(b"<?xpacket", 1)[0])
    assert description(root)["x-default"] == "TOTAL 12[2J  done\tend\nnext \U0001f600 again"
    assert root.findtext(".//kvl:model", namespaces=NS) == "toy"
    assert photo.with_suffix(".txt").read_bytes().decode() == "TOTAL 12[2J  done\tend\r\nnext \U0001f600 again\n"
    assert json.loads(photo.with_suffix(".json").read_text())["answer"] == hostile + " again"  # JSON escapes them
    assert writer.done(str(photo))


def test_a_sidecar_that_would_replace_an_input_is_refused_before_the_model_loads(kvl, tmp_path):
    png = make_image(tmp_path / "p.png").read_bytes()
    (tmp_path / "pic.txt").write_bytes(png)  # an image under a name its own sidecar has
    r = kvl("caption", tmp_path / "pic.txt", "--model", tmp_path / "missing.gguf", "--sidecar", "txt")
    assert r.code == 2 and "would replace the input" in r.err and str(tmp_path / "pic.txt") in r.err
    assert (tmp_path / "pic.txt").read_bytes() == png
    make_image(tmp_path / "a.jpg")
    (tmp_path / "a.json").write_bytes(png)  # a.jpg's sidecar is another input
    r = kvl("caption", tmp_path / "a.jpg", tmp_path / "a.json", "--model", tmp_path / "missing.gguf",
            "--sidecar", "json")
    assert r.code == 2 and f"{tmp_path / 'a.jpg'}'s sidecar {tmp_path / 'a.json'} would replace the input" in r.err
    assert len(r.err.strip().splitlines()) == 1 and (tmp_path / "a.json").read_bytes() == png


def test_a_json_that_is_not_kvls_is_not_replaced_without_overwrite(kvl, scripted, photos):
    many = photos(2)
    theirs = Path(many[0]).with_suffix(".json")
    theirs.write_text('{"title": "p00.png", "photoTakenTime": {"timestamp": "1"}}')  # Google Takeout's
    r = kvl("caption", *many, *scripted.args(), "--json", "--sidecar", "json", "--sidecar", "txt")
    assert r.code == 5
    first, second = records(r.out)
    assert first["exit_code"] == 3 and f"{theirs} is already there and it is not kvl's record" in first["error"]
    assert second["answer"] == SCRIPTED_ANSWER and Path(many[1]).with_suffix(".json").is_file()
    assert "Takeout" not in theirs.read_text() and "photoTakenTime" in theirs.read_text()  # as it was
    assert not Path(many[0]).with_suffix(".txt").exists()  # none of the input's sidecars written: never a mixed set
    r = kvl("caption", many[0], *scripted.args(), "--sidecar", "json", "--overwrite")
    assert r.code == 0 and json.loads(theirs.read_text())["answer"] == SCRIPTED_ANSWER


def test_sidecars_of_another_task_or_of_nobody_known_are_a_conflict(kvl, scripted, photos):
    many = photos(2)
    assert kvl("caption", many[0], *scripted.args(), "--sidecar", "json", "--sidecar", "txt").code == 0
    caption = {k: Path(many[0]).with_suffix(f".{k}").read_bytes() for k in ("json", "txt")}
    Path(many[1]).with_suffix(".txt").write_text("a hand-written caption\n")  # a training set's own
    r = kvl("ocr", *many, *scripted.args(), "--sidecar", "json", "--sidecar", "txt")
    assert r.code == 3, r.err
    assert "it holds kvl's caption record" in r.err and "kvl cannot tell who wrote it" in r.err
    assert {k: Path(many[0]).with_suffix(f".{k}").read_bytes() for k in ("json", "txt")} == caption
    assert Path(many[1]).with_suffix(".txt").read_text() == "a hand-written caption\n"
    # the same task again: kvl's own, replaced (one sidecar missing makes the input run; a .txt beside
    # kvl's .json of the same task is kvl's too)
    Path(many[0]).with_suffix(".txt").unlink()
    assert kvl("caption", many[0], *scripted.args(), "--sidecar", "json", "--sidecar", "txt").code == 0
    assert kvl("caption", many[0], *scripted.args(), "--sidecar", "json", "--sidecar", "xmp").code == 0
    r = kvl("ocr", *many, *scripted.args(), "--sidecar", "json", "--sidecar", "txt", "--overwrite")
    assert r.code == 0 and json.loads(Path(many[1]).with_suffix(".json").read_text())["task"] == "ocr"
    assert Path(many[1]).with_suffix(".txt").read_text() == SCRIPTED_ANSWER + "\n"


def test_a_deeply_nested_xmp_fails_its_input_only(kvl, scripted, photos):
    many = photos(2)
    deep = Path(many[0]).with_suffix(".xmp")
    deep.write_bytes(HEAD + b"<a>" * 1500 + b"</a>" * 1500 + TAIL)
    r = kvl("caption", *many, *scripted.args(), "--json", "--sidecar", "xmp")
    assert r.code == 5 and "Traceback" not in r.err
    first, second = records(r.out)
    assert first["exit_code"] == 3 and "nested deeper than 100 levels" in first["error"]
    assert second["answer"] == SCRIPTED_ANSWER and xmp.kvl_task(Path(many[1]).with_suffix(".xmp").read_bytes())


def test_a_sidecar_dir_that_is_a_file_is_refused_and_long_names_are_written(kvl, scripted, tmp_path):
    (tmp_path / "caps").write_text("a file")
    photo = make_image(tmp_path / ("long-" * 49 + "x.png"))  # 251 characters: a temporary name must be shorter
    r = kvl("caption", photo, "--model", tmp_path / "missing.gguf", "--sidecar", "txt", "--sidecar-dir",
            tmp_path / "caps")
    assert r.code == 2 and "is not a folder" in r.err
    r = kvl("caption", photo, "--model", tmp_path / "missing.gguf", "--sidecar", "txt", "--sidecar-dir", "")
    assert r.code == 2 and "--sidecar-dir is empty" in r.err
    r = kvl("caption", photo, "--model", tmp_path / "missing.gguf", "--sidecar", "txt", "--sidecar-dir",
            "/proc/kvl-sidecars")  # a folder no one can make: said before the model loads
    assert r.code == 7 and "cannot make --sidecar-dir /proc/kvl-sidecars" in r.err
    r = kvl("caption", photo, *scripted.args(), "--sidecar", "txt", "--sidecar", "xmp")
    assert r.code == 0, r.err
    assert photo.with_suffix(".txt").read_text() == SCRIPTED_ANSWER + "\n" and photo.with_suffix(".xmp").is_file()


def test_a_fifo_where_a_sidecar_goes_fails_its_input_and_never_waits(scripted, photos):
    import os
    import subprocess

    from .conftest import kvl_env
    from .kvlrun import KVL

    many = photos(2)
    os.mkfifo(Path(many[0]).with_suffix(".json"))  # nobody writes it: opening it to read would wait forever
    r = subprocess.run([*KVL, "caption", *many, *scripted.args(), "--json", "--sidecar", "json"], capture_output=True,
                       text=True, env=kvl_env(), timeout=120)
    assert r.returncode == 5, r.stderr
    first, second = records(r.stdout)
    assert first["exit_code"] == 3 and "is not a plain file" in first["error"]
    assert second["answer"] == SCRIPTED_ANSWER


def test_a_urls_host_cannot_lead_a_sidecar_out_of_the_sidecar_dir():
    from kvl_cli.sidecars import sidecar_path

    for label in ("http://../a.png", "s3://../x/a.png", "http://./a.png"):
        path = sidecar_path(label, "txt", "/out")
        assert ".." not in path.parts and path.parts[:2] == ("/", "out"), path


def test_the_models_control_bytes_never_break_its_own_xmp(kvl, random_pair, photos):
    from .kvlrun import LONG

    [photo] = photos(1)
    for again in ([], ["--overwrite"]):  # written, then merged into: kvl reads back what it wrote
        r = kvl("caption", *LONG, *random_pair.args(), photo, "--json", "--sidecar", "xmp", "--sidecar", "txt", *again)
        assert r.code == 0, r.err
    [rec] = records(r.out)
    assert any(ch in rec["answer"] for ch in map(chr, [*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20)]))  # C0 ones
    side = Path(photo).with_suffix(".xmp").read_bytes()
    said = description(ET.fromstring(side.split(b"?>", 1)[1].rsplit(b"<?xpacket", 1)[0]))["x-default"]
    assert said == xmp.xml_text(rec["answer"].strip()) and xmp.kvl_task(side) == "caption"
    assert Path(photo).with_suffix(".txt").read_bytes().decode() == xmp.xml_text(rec["answer"].strip()) + "\n"


def test_a_home_relative_name_from_a_list_gets_its_sidecar_beside_it(kvl, scripted, isolated, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (isolated / "pics").mkdir()
    make_image(isolated / "pics" / "a.png")
    (tmp_path / "list.txt").write_text("~/pics/a.png\n")
    r = kvl("caption", "--from", tmp_path / "list.txt", *scripted.args(), "--sidecar", "txt")
    assert r.code == 0, r.err
    assert (isolated / "pics" / "a.txt").read_text() == SCRIPTED_ANSWER + "\n" and not (tmp_path / "~").exists()


def test_a_conflict_fails_its_input_only_with_parallel_workers(kvl, scripted, photos):
    many = photos(3)
    Path(many[1]).with_suffix(".json").write_text('{"settings": true}')
    r = kvl("caption", *many, *scripted.args(), "-P", "2", "--json", "--sidecar", "json")
    assert r.code == 5, r.err
    by_input = {x["input"]: x for x in records(r.out)}
    assert by_input[many[1]]["exit_code"] == 3 and "not kvl's record" in by_input[many[1]]["error"]
    assert all(json.loads(Path(m).with_suffix(".json").read_text())["answer"] == SCRIPTED_ANSWER
               for m in (many[0], many[2]))
    assert Path(many[1]).with_suffix(".json").read_text() == '{"settings": true}'


def test_a_sidecar_never_takes_set_id_or_execute_bits(tmp_path):
    import os

    from kvl_cli.sidecars import write_atomic

    target = tmp_path / "tool"
    target.write_text("#!/bin/sh\n")
    target.chmod(0o4755)
    link = tmp_path / "a.txt"
    link.symlink_to(target)  # a sidecar's place holding a link to a set-uid program
    write_atomic(link, b"caption\n")
    assert not link.is_symlink() and link.read_bytes() == b"caption\n"
    assert os.stat(link).st_mode & 0o7111 == 0 and target.read_text() == "#!/bin/sh\n"
    (tmp_path / "b.txt").write_text("old")
    (tmp_path / "b.txt").chmod(0o640)
    write_atomic(tmp_path / "b.txt", b"new\n")
    assert os.stat(tmp_path / "b.txt").st_mode & 0o7777 == 0o640  # its own permissions kept


def test_an_input_whose_name_is_not_utf8_gets_its_sidecars(scripted, tmp_path):
    import os
    import subprocess

    from .conftest import kvl_env
    from .kvlrun import KVL

    png = make_image(tmp_path / "p.png").read_bytes()
    folder = os.fsencode(tmp_path)
    with open(folder + b"/caf\xff.png", "wb") as f:
        f.write(png)
    r = subprocess.run([*KVL, "caption", folder + b"/caf\xff.png", *scripted.args(), "--json", "--sidecar", "json",
                        "--sidecar", "xmp", "--sidecar", "txt"], capture_output=True, env=kvl_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    for kind in ("json", "xmp", "txt"):
        assert os.path.isfile(folder + b"/caf\xff." + kind.encode())
    with open(folder + b"/caf\xff.json", "rb") as f:
        assert json.loads(f.read())["answer"] == SCRIPTED_ANSWER


def test_a_conflict_is_found_before_the_model_loads(kvl, photos, tmp_path):
    [photo] = photos(1)
    Path(photo).with_suffix(".json").write_text('{"title": "mine"}')
    r = kvl("caption", photo, "--model", tmp_path / "missing.gguf", "--sidecar", "json")  # no model is loaded
    assert r.code == 3 and "is already there and it is not kvl's record" in r.err and "missing.gguf" not in r.err
    Path(photo).with_suffix(".json").unlink()
    Path(photo).with_suffix(".xmp").write_text("<x:xmpmeta><rdf:RDF>cut sh")
    r = kvl("caption", photo, "--model", tmp_path / "missing.gguf", "--sidecar", "xmp", "--overwrite")
    assert r.code == 3 and "is not XMP kvl can merge into" in r.err  # --overwrite merges still: refused at once
