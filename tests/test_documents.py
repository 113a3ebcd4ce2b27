"""#19: documents. PDFs (and multi-page TIFFs) go wherever images go, page by page: per-page records,
page breaks, --pages, --text-layer, ask over pages in one prompt, bad documents in their place, resumes
by page, the library face. The real kvl and the real engine on the toy pair; PDFs the suite writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvl_cli.errors import ContextError, UsageError
from kvl_cli.synthetic import SCRIPTED_ANSWER

from . import pdfs
from .conftest import kvl_env
from .pdfs import PageSpec

SHORT = ["--no-think", "--max-tokens", "4", "--temperature", "0"]


def jsonl(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture
def docs(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "docs"
    d.mkdir()
    (d / "fake.pdf").write_bytes(b"GIF89a this is not a PDF at all")
    (d / "damaged.pdf").write_bytes(pdfs.damaged_pdf())
    return {
        "mixed": pdfs.write_pdf(d / "mixed.pdf", pdfs.mixed_pages()),
        "scan": pdfs.write_pdf(d / "scan.pdf", pdfs.scanned_pages(4)),
        "encrypted": pdfs.write_pdf(d / "locked.pdf", pdfs.mixed_pages(), password="s3cret-pw"),
        "damaged": d / "damaged.pdf",
        "fake": d / "fake.pdf",
        "huge_page": pdfs.write_pdf(d / "banner.pdf", [PageSpec(14400, 720, text="too wide"), PageSpec(text="fine")]),
    }


# ---- reading pages (the media layer) ------------------------------------------------------------


def test_render_scale_fills_the_task_budget():
    from kvl_cli.media.pdf import render_dpi

    assert round(render_dpi(612, 792, 2048, None)) == 131  # ocr on US Letter
    assert round(render_dpi(612, 792, 1024, None)) == 93  # caption / ask
    assert render_dpi(72, 72, 2048, None) == 300  # a one-inch page: capped at print resolution
    assert render_dpi(612, 792, 2048, 200) == 200  # --dpi


def _page(data: bytes, number: int, count: int, tokens: int = 1024, **kw):  # type: ignore[no-untyped-def]
    from kvl_cli.media.documents import DocPage, load_page
    from kvl_cli.pages import Page

    return load_page("doc.pdf", data, DocPage(Page(number, count), "pdf", **kw), tokens)


def test_a_rotated_page_comes_out_upright():
    from PIL import Image

    img = _page(pdfs.pdf_bytes(pdfs.mixed_pages()), 2, 3)
    assert img.height > img.width  # a landscape page turned by /Rotate 90 is shown portrait
    gray = Image.frombytes("RGB", (img.width, img.height), img.rgb).convert("L")
    w, h = gray.size
    # the mark at the page's own top left is, turned clockwise, at the top right
    assert gray.getpixel((w - 5, 5)) < 50
    assert min(gray.getpixel((5, 5)), gray.getpixel((5, h - 5)), gray.getpixel((w - 5, h - 5))) > 200


def test_pages_of_mixed_sizes_each_fill_the_budget_in_their_own_shape():
    data = pdfs.pdf_bytes(pdfs.mixed_pages())
    for number, (pw, ph) in enumerate([(612, 792), (420, 595), (300, 300)], start=1):
        img = _page(data, number, 3, tokens=1024)
        assert abs(img.width / img.height - pw / ph) < 0.01
        assert 0.9 * 1024 <= img.width * img.height / 784 <= 1.01 * 1024  # rounding to whole pixels


def test_dpi_sets_the_resolution():
    img = _page(pdfs.pdf_bytes(pdfs.mixed_pages()), 1, 3, dpi=50.0)
    assert (img.width, img.height) == (425, 550)


def test_the_sandbox_and_this_process_render_the_same_pixels(monkeypatch):
    data = pdfs.pdf_bytes(pdfs.mixed_pages())
    sandboxed = _page(data, 3, 3)
    monkeypatch.setenv("KVL_SANDBOX", "0")
    assert _page(data, 3, 3).rgb == sandboxed.rgb


def test_a_page_is_keyed_by_its_pixels():
    data = pdfs.pdf_bytes(pdfs.mixed_pages())
    assert _page(data, 1, 3).id == _page(data, 1, 3).id
    assert _page(data, 1, 3).id != _page(data, 3, 3).id
    assert _page(data, 1, 3).id != _page(data, 1, 3, tokens=256).id


def test_page_selections():
    from kvl_cli.pages import page_key, select_pages, split_page

    assert select_pages("1-3,7", 10, "d") == [1, 2, 3, 7]
    assert select_pages("7,2,2-3", 10, "d") == [2, 3, 7]
    assert select_pages("8-", 10, "d") == [8, 9, 10]
    assert select_pages(None, 3, "d") == [1, 2, 3]
    with pytest.raises(UsageError, match="d has 10 pages"):
        select_pages("9-11", 10, "d")
    for bad in ("0", "3-1", "a", "1,,2", "-2"):
        with pytest.raises(UsageError):
            select_pages(bad, 10, "d")
    assert split_page(page_key("a#b.pdf", 3)) == ("a#b.pdf", 3)
    assert split_page("x.png") == ("x.png", None)


def test_page_budget_fits_the_context_or_says_how_many_pages_would():
    from kvl_cli.run.documents import page_budget

    assert page_budget(3, 1024, 16384, 4096) == 1024
    assert 8 <= page_budget(90, 1024, 4096, 8192) < 40
    with pytest.raises(ContextError, match=r"300 pages do not fit --ctx 4096 .* 97 pages would"):
        page_budget(300, 1024, 4096, 8192)


# ---- kvl ocr -------------------------------------------------------------------------------------


def test_ocr_text_separates_pages_with_form_feeds(kvl, scripted, docs):
    r = kvl("ocr", docs["scan"], *scripted.args())
    assert r.code == 0, r.err
    assert r.out.split("\f") == [SCRIPTED_ANSWER + "\n"] * 4
    assert "==>" not in r.out and r.err == ""


def test_ocr_json_is_one_record_per_page_in_order(kvl, scripted, docs):
    r = kvl("ocr", docs["mixed"], "--json", *SHORT, *scripted.args())
    assert r.code == 0, r.err
    recs = jsonl(r.out)
    assert [(x["input"], x["page"], x["pages"]) for x in recs] == [(str(docs["mixed"]), n, 3) for n in (1, 2, 3)]
    assert list(recs[0])[:3] == ["input", "page", "pages"]
    assert all(x["error"] is None and x["image_tokens"][0] > 0 for x in recs)


def test_pages_keeps_the_selected_pages(kvl, scripted, docs):
    r = kvl("ocr", docs["scan"], "--pages", "2-3", "--json", *SHORT, *scripted.args())
    assert [x["page"] for x in jsonl(r.out)] == [2, 3]
    r = kvl("ocr", docs["scan"], "--pages", "4,1", "--json", *SHORT, *scripted.args())
    assert [x["page"] for x in jsonl(r.out)] == [1, 4]


def test_a_page_out_of_range_is_exit_2_naming_the_page_count(kvl, scripted, docs):
    r = kvl("ocr", docs["scan"], "--pages", "2-9", *scripted.args())
    assert r.code == 2
    assert r.err.strip().splitlines() == [f"kvl: error: --pages 2-9: {docs['scan']} has 4 pages "
                                          "(choose pages between 1 and 4)"]
    assert r.out == ""


def test_a_malformed_page_selection_is_exit_2_before_anything_runs(kvl, scripted, docs):
    r = kvl("ocr", docs["scan"], "--pages", "3-1", *scripted.args())
    assert r.code == 2 and "--pages" in r.err and "not a range" in r.err


def test_markdown_marks_each_page(kvl, scripted, docs):
    r = kvl("ocr", docs["mixed"], "--format", "markdown", *scripted.args())
    assert r.code == 0, r.err
    assert r.out == "".join(f"{chr(10) if n > 1 else ''}<!-- page {n} -->\n\n{SCRIPTED_ANSWER}\n" for n in (1, 2, 3))


def test_several_inputs_head_a_document_once_and_break_its_pages(kvl, scripted, docs, images):
    r = kvl("ocr", images["jpg"], docs["mixed"], *scripted.args())
    assert r.code == 0, r.err
    assert r.out == (f"==> {images['jpg']} <==\n{SCRIPTED_ANSWER}\n\n==> {docs['mixed']} <==\n"
                     + "\f".join([SCRIPTED_ANSWER + "\n"] * 3))


def test_text_layer_uses_a_pages_own_text_and_ocrs_the_rest(kvl, scripted, tmp_path):
    doc = pdfs.write_pdf(tmp_path / "half.pdf", [PageSpec(text="Born digital"), *pdfs.scanned_pages(1)])
    r = kvl("ocr", doc, "--text-layer", "--json", *SHORT, *scripted.args())
    assert r.code == 0, r.err
    a, b = jsonl(r.out)
    assert (a["page"], a["source"], a["answer"], a["image_tokens"]) == (1, "text", "Born digital", [])
    assert (b["page"], b["source"], b["error"]) == (2, "ocr", None) and b["image_tokens"][0] > 0


def test_a_born_digital_pdf_costs_no_model(kvl, docs, tmp_path):
    # every page has its own text: no model is looked for (these files do not even exist)
    r = kvl("ocr", docs["mixed"], "--text-layer", "--model", tmp_path / "none.gguf", "--mmproj", tmp_path / "n.gguf")
    assert r.code == 0, r.err
    assert r.out.split("\f") == ["Invoice 1001 total 42.00\n", "Rotated page two\n", "Page three\n"]


def test_caption_describes_each_page(kvl, scripted, docs):
    r = kvl("caption", docs["mixed"], "--json", *SHORT, *scripted.args())
    recs = jsonl(r.out)
    assert [(x["task"], x["page"]) for x in recs] == [("caption", 1), ("caption", 2), ("caption", 3)]


def test_a_folder_holds_documents_too(kvl, scripted, docs, images, tmp_path):
    folder = tmp_path / "mixedfolder"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(images["jpg"].read_bytes())
    (folder / "b.pdf").write_bytes(docs["mixed"].read_bytes())
    r = kvl("ocr", folder, "--json", *SHORT, *scripted.args())
    assert [(Path(x["input"]).name, x.get("page")) for x in jsonl(r.out)] == [("a.jpg", None), ("b.pdf", 1),
                                                                             ("b.pdf", 2), ("b.pdf", 3)]


def test_a_pdf_on_stdin(kvl, scripted, docs):
    data = docs["mixed"].read_bytes()
    r = kvl("ocr", "-", "--json", *SHORT, *scripted.args(), stdin=data)
    assert [(x["input"], x["page"]) for x in jsonl(r.out)] == [("-", 1), ("-", 2), ("-", 3)]
    r = kvl("ocr", "--json", "--pages", "2", *SHORT, *scripted.args(), stdin=data)  # no argument: stdin is the file
    assert [(x["input"], x["page"]) for x in jsonl(r.out)] == [("-", 2)]


def test_a_multi_page_tiff_is_read_as_pages(kvl, scripted, tmp_path, images):
    from PIL import Image

    frames = [Image.new("RGB", (120, 80), (200, 0, 0)), Image.new("RGB", (60, 90), (0, 0, 200))]
    tiff = tmp_path / "fax.tiff"
    frames[0].save(tiff, save_all=True, append_images=frames[1:])
    r = kvl("ocr", tiff, images["tiff"], "--json", *SHORT, *scripted.args())
    assert r.code == 0, r.err
    recs = jsonl(r.out)
    assert [(Path(x["input"]).name, x.get("page"), x.get("pages")) for x in recs] == [
        ("fax.tiff", 1, 2), ("fax.tiff", 2, 2), ("cmyk.tiff", None, None)]  # a one-page TIFF is an image


def test_the_cache_keeps_each_rendered_page(kvl, scripted, docs):
    first = jsonl(kvl("ocr", docs["mixed"], "--json", *SHORT, *scripted.args()).out)
    again = jsonl(kvl("ocr", docs["mixed"], "--json", *SHORT, *scripted.args()).out)
    # the first time each page is encoded (only the text before its image may come from another page)
    assert all(x["timings"]["encode_s"] > 0 for x in first)
    # each page again: its prompt, image included, comes back from the disk cache; nothing is encoded
    assert all(x["cached"]["prefix_tokens"] >= x["tokens"]["image"] > 0 for x in again)
    assert [x["timings"]["encode_s"] for x in again] == [0, 0, 0]
    other = jsonl(kvl("ocr", docs["mixed"], "--json", "--dpi", "40", *SHORT, *scripted.args()).out)
    # another render, another key: each page encoded again (the text before it may still be reused)
    assert all(x["timings"]["encode_s"] > 0 for x in other)


# ---- bad documents ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name, message", [
    ("damaged", "the PDF is damaged (PDFium could not read it)"),
    ("encrypted", "the PDF is encrypted (give its password with --password or KVL_PDF_PASSWORD)"),
    ("fake", "not a PDF (it is named like one, but does not begin with %PDF-)"),
])
def test_a_bad_document_is_exit_3_in_one_line(kvl, scripted, docs, name, message):
    r = kvl("ocr", docs[name], *scripted.args())
    assert r.code == 3
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kvl: error: {docs[name]}: {message}")
    assert "Traceback" not in r.err and r.out == ""


def test_bad_documents_keep_their_place_and_the_batch_goes_on(kvl, scripted, docs, images):
    r = kvl("ocr", images["jpg"], docs["damaged"], docs["mixed"], docs["encrypted"], "--pages", "1", "--json",
            *SHORT, *scripted.args())
    assert r.code == 5
    recs = jsonl(r.out)
    assert [(Path(x["input"]).name, x.get("page"), x["error"] is None) for x in recs] == [
        ("red.jpg", None, True), ("damaged.pdf", None, False), ("mixed.pdf", 1, True), ("locked.pdf", None, False)]
    assert [x["exit_code"] for x in recs if x["error"]] == [3, 3]


def test_the_password_opens_and_never_shows(kvl, scripted, docs, monkeypatch):
    r = kvl("ocr", docs["encrypted"], "--password", "s3cret-pw", "--json", "-vv", *SHORT, *scripted.args())
    assert r.code == 0, r.err
    assert [x["page"] for x in jsonl(r.out)] == [1, 2, 3]
    assert "s3cret" not in r.out + r.err
    monkeypatch.setenv("KVL_PDF_PASSWORD", "s3cret-pw")
    r = kvl("ocr", docs["encrypted"], "--text-layer", "--json", *scripted.args())
    assert jsonl(r.out)[0]["answer"] == "Invoice 1001 total 42.00" and "s3cret" not in r.out + r.err
    r = kvl("ocr", docs["encrypted"], "--password", "wrong", *scripted.args())
    assert r.code == 3 and "password is wrong" in r.err and "wrong" not in r.err.replace("is wrong", "")


def test_too_many_pages_is_refused_unread(kvl, scripted, docs, monkeypatch):
    monkeypatch.setenv("KVL_MAX_PDF_PAGES", "3")
    r = kvl("ocr", docs["scan"], *scripted.args())
    assert r.code == 3
    assert r.err.strip() == (f"kvl: error: {docs['scan']}: the PDF has 4 pages, over the 3-page safety limit "
                             "(split it (e.g. qpdf --pages), or raise KVL_MAX_PDF_PAGES if you trust the file)")


def test_a_100000_page_pdf_is_refused_at_once(kvl, scripted, tmp_path):
    doc = pdfs.write_pdf(tmp_path / "huge.pdf", [PageSpec()] * 100_000, share_content=True)
    r = kvl("ocr", doc, "--json", *scripted.args())
    assert r.code == 3
    (rec,) = jsonl(r.out)
    assert rec["error"].startswith(f"{doc}: the PDF has 100,000 pages, over the 10,000-page safety limit")


def test_an_absurd_page_size_fails_that_page_only(kvl, scripted, docs):
    r = kvl("ocr", docs["huge_page"], "--json", *SHORT, *scripted.args())
    assert r.code == 5
    bad, good = jsonl(r.out)
    assert (bad["page"], bad["pages"], bad["exit_code"]) == (1, 2, 3)
    assert "page 1 is 200x10 inches, over the 100-inch safety limit" in bad["error"]
    assert (good["page"], good["error"]) == (2, None)
    r = kvl("ocr", docs["huge_page"], *scripted.args())  # text: the page that failed leaves no page break
    assert (r.code, r.out) == (5, SCRIPTED_ANSWER + "\n") and "page 1 is 200x10 inches" in r.err


# ---- kvl ask over a document -------------------------------------------------------------------------


def test_ask_dry_run_holds_one_image_per_page_in_page_order(kvl, scripted, docs):
    r = kvl("ask", docs["mixed"], "What is the total?", "--dry-run", "--json", *scripted.args())
    assert r.code == 0, r.err
    (rec,) = jsonl(r.out)
    assert len(rec["image_tokens"]) == 3 and rec["pages_in_prompt"] == [1, 2, 3]
    prompt = rec["prompt"]
    at = [prompt.index(f"[page {n}]<|media_start|>") for n in (1, 2, 3)]
    assert at == sorted(at) and prompt.count("<|media_start|>") == 3
    assert prompt.index("[page 3]") < prompt.index("What is the total?")


def test_ask_about_selected_pages(kvl, scripted, docs):
    r = kvl("ask", docs["scan"], "q", "--pages", "2-3", "--dry-run", *scripted.args())
    assert "[page 2]<|media_start|>" in r.out and "[page 3]<|media_start|>" in r.out and "[page 1]" not in r.out
    assert "2 images" in r.out


def test_ask_lowers_the_page_budget_to_fit_the_context(kvl, scripted, tmp_path):
    doc = pdfs.write_pdf(tmp_path / "long.pdf", pdfs.scanned_pages(100), share_content=True)
    r = kvl("ask", doc, "q", "--ctx", "4096", "--dry-run", "--json", *scripted.args())
    (rec,) = jsonl(r.out)
    assert len(rec["image_tokens"]) == 100 and max(rec["image_tokens"]) <= rec["tokens_per_page"] < 40
    assert rec["prompt_tokens"] < 4096


def test_ask_a_document_too_long_is_exit_8_saying_how_many_pages_fit(kvl, scripted, tmp_path):
    doc = pdfs.write_pdf(tmp_path / "long.pdf", pdfs.scanned_pages(300), share_content=True)
    r = kvl("ask", doc, "q", "--ctx", "4096", *scripted.args())
    assert r.code == 8
    assert r.err.strip() == ("kvl: error: 300 pages do not fit --ctx 4096 even at 8 image tokens a page; 111 pages "
                             "would (choose pages with --pages (at most 111), or raise --ctx)")


def test_ask_answers_about_the_pages(kvl, scripted, docs):
    r = kvl("ask", docs["mixed"], "What is the total?", "--json", *scripted.args())
    assert r.code == 0, r.err
    (rec,) = jsonl(r.out)
    assert rec["answer"] == SCRIPTED_ANSWER and len(rec["image_tokens"]) == 3 and rec["pages_in_prompt"] == [1, 2, 3]


def test_ask_a_damaged_document_is_exit_3(kvl, scripted, docs):
    r = kvl("ask", docs["damaged"], "q", *scripted.args())
    assert r.code == 3 and "the PDF is damaged" in r.err


# ---- batches: resume by page, sidecars ---------------------------------------------------------------


def test_skip_done_resumes_at_the_first_missing_page(kvl, scripted, docs, tmp_path):
    out = tmp_path / "out.jsonl"
    first = kvl("ocr", docs["scan"], "--pages", "1-2", "--json", *SHORT, *scripted.args())
    out.write_text(first.out)
    r = kvl("ocr", docs["scan"], "--json", "--skip-done", out, *SHORT, *scripted.args())
    assert r.code == 0, r.err
    assert [x["page"] for x in jsonl(r.out)] == [3, 4]
    assert "skipping 2 pages already done; 2 to run" in r.err


def test_skip_done_from_a_pipe_is_read_once_for_images_and_pages(kvl, scripted, docs, images, tmp_path):
    """`--skip-done <(cat out.jsonl)`: a pipe can be read only once, so the records that say which
    inputs and which pages are done must come from that one reading."""
    import os
    import threading

    first = kvl("ocr", images["png"], docs["scan"], "--pages", "1-2", "--json", *SHORT, *scripted.args())
    r_fd, w_fd = os.pipe()

    def write() -> None:
        with os.fdopen(w_fd, "w") as f:
            f.write(first.out)

    threading.Thread(target=write, daemon=True).start()
    r = kvl("ocr", images["png"], docs["scan"], "--json", "--skip-done", f"/dev/fd/{r_fd}", *SHORT, *scripted.args())
    os.close(r_fd)
    assert r.code == 0, r.err
    assert [(Path(x["input"]).name, x.get("page")) for x in jsonl(r.out)] == [("scan.pdf", 3), ("scan.pdf", 4)]
    assert "skipping 2 pages already done; 2 to run" in r.err


def test_sidecars_are_per_page_and_mark_what_is_done(kvl, scripted, docs):
    r = kvl("ocr", docs["mixed"], "--sidecar", "txt", "--sidecar", "json", *SHORT, *scripted.args())
    assert r.code == 0, r.err
    folder = docs["mixed"].parent
    assert (folder / "mixed.p2.txt").read_text() == SCRIPTED_ANSWER + "\n"
    assert json.loads((folder / "mixed.p3.json").read_text())["page"] == 3
    (folder / "mixed.p2.txt").unlink()
    (folder / "mixed.p2.json").unlink()
    r = kvl("ocr", docs["mixed"], "--sidecar", "txt", "--sidecar", "json", "--json", *SHORT, *scripted.args())
    assert [x["page"] for x in jsonl(r.out)] == [2]


# ---- the library face ------------------------------------------------------------------------------


def test_library_ocr_and_ask_take_document_options(scripted, docs):
    import kvl_cli

    with kvl_cli.open(scripted.model, scripted.mmproj) as lib:
        answers = lib.ocr([docs["mixed"]], pages="2-3", text_layer=True)
        assert [(a.meta["page"], a.meta["source"], a.answer) for a in answers] == [
            (2, "text", "Rotated page two"), (3, "text", "Page three")]
        answers = lib.ocr([docs["encrypted"]], pages="1", password="s3cret-pw", max_tokens=4, no_think=True)
        assert answers[0].ok and answers[0].meta["page"] == 1
        (bad,) = lib.ocr([docs["encrypted"]])
        assert not bad.ok and "encrypted" in str(bad.error)
        answer = lib.ask([docs["scan"]], "q", pages="1,3", max_tokens=4, no_think=True)
        assert answer.ok and answer.meta["pages_in_prompt"] == [1, 3] and len(answer.result.image_tokens) == 2
        events = list(lib.ask([docs["mixed"]], "q", stream=True, pages="2-", max_tokens=4, no_think=True))
        assert len(events[-1].result.image_tokens) == 2


# ---- memory ------------------------------------------------------------------------------------------


def test_300_pages_run_in_bounded_memory(scripted, tmp_path):
    """kvl ocr over 300 pages holds one page's pixels at a time: peak RSS (kvl and its decoder process,
    the larger of the two) stays far under 1.5 GB."""
    doc = pdfs.write_pdf(tmp_path / "p300.pdf", pdfs.scanned_pages(300), share_content=True)
    probe = ("import resource, subprocess, sys\n"
             "r = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)\n"
             "print(r.returncode, r.stdout.count(b'\\n'), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    cmd = [sys.executable, "-c", probe, sys.executable, "-m", "kvl_cli", "ocr", str(doc), "--json", "--no-cache",
           *SHORT, *scripted.args()]
    res = subprocess.run(cmd, capture_output=True, text=True, env=kvl_env(None, KVL_HOME=str(tmp_path / "k")),
                         timeout=600)
    code, lines, peak_kb = map(int, res.stdout.split())
    assert (code, lines) == (0, 300), res.stderr
    assert peak_kb * 1024 < 1.5e9
    os.environ.get("KVL_TEST_VERBOSE") and print(f"peak RSS {peak_kb / 1024:.0f} MB")  # noqa: T201


# ---- beyond one process: kvl serve and Ray ------------------------------------------------------------


def test_serve_takes_a_pdf_file_part_as_its_pages(scripted, tmp_path):
    import base64

    from .serve_util import chat, start_server

    def file_part(data: bytes, name: str = "doc.pdf") -> dict:
        uri = "data:application/pdf;base64," + base64.b64encode(data).decode()
        return {"type": "file", "file": {"file_data": uri, "filename": name}}

    def ask(part: dict, **ext: object) -> tuple[int, dict]:
        body = {"messages": [{"role": "user", "content": [part, {"type": "text", "text": "Total?"}]}],
                "max_tokens": 4, "kvl": {"think_budget": 0, **ext}}
        status, _, answer = chat(srv.port, body)
        return status, answer

    srv = start_server(scripted, tmp_path / "serve", "--ctx", "8192")
    try:
        status, body = ask(file_part(pdfs.pdf_bytes(pdfs.mixed_pages())))
        assert status == 200, body
        assert len(body["kvl"]["image_tokens"]) == 3  # one image per page
        status, body = ask(file_part(pdfs.pdf_bytes(pdfs.scanned_pages(5))), pages="2,4")
        assert status == 200 and len(body["kvl"]["image_tokens"]) == 2
        status, body = ask(file_part(pdfs.pdf_bytes(pdfs.scanned_pages(5))), pages="9")
        assert status == 400 and "has 5 pages" in body["error"]["message"]
        status, body = ask(file_part(pdfs.damaged_pdf()))
        assert status == 400 and "damaged" in body["error"]["message"]
        status, body = ask(file_part(pdfs.pdf_bytes(pdfs.mixed_pages(), password="pw")))
        assert status == 400 and "encrypted" in body["error"]["message"]
        status, body = ask({"type": "file", "file": {"file_data": "data:text/plain;base64,aGk=", "filename": "a"}})
        assert status == 400 and body["error"]["param"] == "messages[0].content[0].file"
        assert "Traceback" not in srv.log_text()
    finally:
        assert srv.stop() == 0, srv.log_text()


def test_ray_runs_every_page_exactly_once(scripted, docs, images, tmp_path):
    env = kvl_env(scripted)
    r = subprocess.run([sys.executable, "-m", "kvl_cli", "ocr", "--ray", "local", "--workers", "1", docs["scan"],
                        images["jpg"], docs["damaged"], "--pages", "1-3", *SHORT], capture_output=True, text=True,
                       env=env, timeout=400)
    assert r.returncode == 5, r.stderr
    recs = jsonl(r.stdout)
    keys = sorted((Path(x["input"]).name, x.get("page") or 0) for x in recs)
    assert keys == [("damaged.pdf", 0), ("red.jpg", 0), ("scan.pdf", 1), ("scan.pdf", 2), ("scan.pdf", 3)]
    pages = [x for x in recs if x.get("page")]
    assert all(x["pages"] == 4 and x["error"] is None and x["answer"] for x in pages)
    assert next(x for x in recs if x["input"].endswith("damaged.pdf"))["exit_code"] == 3


def test_a_terminal_heads_each_page_and_a_pipe_does_not_repeat_the_document(docs):
    import io

    from kvl_cli.engine.types import DoneEvent
    from kvl_cli.environment import Environment
    from kvl_cli.pages import Page
    from kvl_cli.render import LiveRenderer, OutputOptions, PlainRenderer

    from .terminal import EVENTS, RESULT, FakeTTY

    def pages(renderer) -> None:  # type: ignore[no-untyped-def]
        for n in (1, 2):
            renderer.begin("doc.pdf", 1, 1, page=Page(n, 2, first=n == 1))
            for ev in EVENTS:
                renderer.event(ev)
            renderer.event(DoneEvent(RESULT))
            renderer.end("doc.pdf", RESULT, {"page": n, "pages": 2})
        renderer.close()

    tty = FakeTTY()
    pages(LiveRenderer(OutputOptions(color=False), Environment(stdout=tty, stderr=io.StringIO())))
    assert "doc.pdf · page 1/2" in tty.getvalue() and "doc.pdf · page 2/2" in tty.getvalue()
    pipe = io.StringIO()
    pages(PlainRenderer(OutputOptions(), Environment(stdout=pipe, stderr=io.StringIO(), stdout_isatty=False)))
    assert pipe.getvalue().count("\f") == 1 and "==>" not in pipe.getvalue()


def test_a_pdf_by_url(kvl, scripted, docs):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = docs["mixed"].read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/files/report.pdf"
        r = kvl("ocr", url, "--pages", "2-3", "--json", *SHORT, *scripted.args())
    finally:
        server.shutdown()
    assert r.code == 0, r.err
    assert [(x["input"], x["page"], x["pages"]) for x in jsonl(r.out)] == [(url, 2, 3), (url, 3, 3)]


def test_chat_takes_a_pdf_as_its_pages(kvl, scripted, docs, monkeypatch):
    lines = "What is the total?\n/add " + str(docs["scan"]) + "\nAnd these?\n"
    r = kvl("chat", docs["mixed"], "--json", "--no-think", "--max-tokens", "4", *scripted.args(), stdin=lines.encode())
    assert r.code == 0, r.err
    first, second = jsonl(r.out)
    assert len(first["image_tokens"]) == 3 and len(second["image_tokens"]) == 7  # 3 pages, then 4 more
    assert f"added {docs['scan']} (4 pages) as item 2" in r.err
    r = kvl("chat", docs["damaged"], *scripted.args(), stdin=b"Hi?\n")
    assert r.code == 3 and "the PDF is damaged" in r.err
    monkeypatch.setenv("KVL_PDF_PASSWORD", "s3cret-pw")
    r = kvl("chat", docs["encrypted"], "--json", "--no-think", "--max-tokens", "4", *scripted.args(), stdin=b"Hi?\n")
    assert r.code == 0 and len(jsonl(r.out)[0]["image_tokens"]) == 3 and "s3cret" not in r.out + r.err


def test_an_image_pdf_from_another_writer(kvl, scripted, tmp_path):
    """A scanned document as Pillow writes it (each page a JPEG in the PDF): the pages come out at
    their own shapes."""
    from PIL import Image

    scans = [Image.new("RGB", (850, 1100), (250, 250, 250)), Image.new("RGB", (1100, 850), (200, 200, 200))]
    doc = tmp_path / "scanned.pdf"
    scans[0].save(doc, save_all=True, append_images=scans[1:], resolution=100)
    r = kvl("ask", doc, "q", "--dry-run", "--json", *scripted.args())
    (rec,) = jsonl(r.out)
    assert r.code == 0 and rec["pages_in_prompt"] == [1, 2]
    assert "<image 1: " in rec["prompt"] and "<image 2: " in rec["prompt"]
    first, second = (rec["prompt"].split(f"<image {n}: ")[1].split(" ")[0] for n in (1, 2))
    w1, h1 = map(int, first.split("×"))
    w2, h2 = map(int, second.split("×"))
    assert h1 > w1 and w2 > h2  # portrait, then landscape


def test_ray_rows_and_resume_keys_are_per_page(docs, tmp_path):
    from kvl_cli.distributed.inputs import image_ref, list_inputs, page_rows
    from kvl_cli.distributed.parts import Store, record_key, scan
    from kvl_cli.media.documents import DocumentOptions

    rows = page_rows(list_inputs([str(docs["scan"]), str(docs["encrypted"])], video=False),
                     DocumentOptions(pages="2-3"))
    scan_key = str(Path(docs["scan"]).absolute())
    assert [r["key"] for r in rows] == [f"{docs['scan']}#page=2", f"{docs['scan']}#page=3", str(docs["encrypted"])]
    assert rows[0]["path"] == scan_key and (rows[0]["page"], rows[0]["pages"]) == (2, 4)
    assert "encrypted" in rows[2]["error"] and rows[2]["exit_code"] == 3
    ref = image_ref(rows[1], DocumentOptions(dpi=72.0))
    assert (ref.label, ref.page.number, ref.page.dpi) == (str(docs["scan"]), 3, 72.0)
    # a page's record is its row's key: --skip-done DIR resumes by page
    store = Store(str(tmp_path / "out"))
    store.ensure()
    store.write("part-x.jsonl", json.dumps({"input": str(docs["scan"]), "page": 2, "pages": 4, "error": None,
                                            "finish_reason": "stop"}) + "\n")
    assert record_key({"input": "a.pdf", "page": 2}) == "a.pdf#page=2"
    assert scan(store).ok == {f"{docs['scan']}#page=2"}
