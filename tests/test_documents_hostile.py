"""#19, a hostile tester's findings: a long PDF through kvl serve (refused at once, fitted, never
holding other requests up), sidecar collisions between pages and images, the page budget of a small
--ctx, API wording for documents, form feeds inside a page's text, sniffed PDFs, error wording,
--pages digits, --text-layer records, ``ask`` through a server. The real kvl and the real engine on
the toy pair; PDFs the suite writes."""

from __future__ import annotations

import base64
import json
import time

import pytest

from kvl_cli.errors import ContextError

from . import pdfs

SHORT = ["--no-think", "--max-tokens", "4", "--temperature", "0"]


def jsonl(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def file_part(data: bytes, name: str = "doc.pdf", mime: str = "application/pdf") -> dict:
    return {"type": "file", "file": {"file_data": f"data:{mime};base64," + base64.b64encode(data).decode(),
                                     "filename": name}}


def body(*parts: dict, **ext: object) -> dict:
    return {"messages": [{"role": "user", "content": [*parts, {"type": "text", "text": "Total?"}]}],
            "max_tokens": 4, "kvl": {"think_budget": 0, **ext}}


# ---- kvl serve ------------------------------------------------------------------------------------


def test_serve_refuses_pages_that_cannot_fit_at_once_saying_what_would(scripted, tmp_path):
    import re

    from .serve_util import chat, start_server

    srv = start_server(scripted, tmp_path / "serve", "--ctx", "2048")
    try:
        t0 = time.monotonic()
        status, _, answer = chat(srv.port, body(file_part(pdfs.pdf_bytes(pdfs.scanned_pages(300), share_content=True))))
        took = time.monotonic() - t0
        assert status == 400, answer
        err = answer["error"]
        assert err["code"] == "context_length_exceeded" and err["param"] == "kvl.pages"
        assert err["message"].startswith("300 pages at 1024 image tokens each need about ")
        assert "over the server's context (2,048 tokens): even at 8 image tokens a page only " in err["message"]
        assert "--pages" not in err["message"]
        assert took < 5, f"refused after {took:.1f} s: the pages were rendered first"
        # 20 pages fit at a lower budget: the answer says which, and that budget is answered
        doc = file_part(pdfs.pdf_bytes(pdfs.scanned_pages(20), share_content=True))
        status, _, answer = chat(srv.port, body(doc))
        assert status == 400, answer
        m = re.search(r"choose at most (\d+) pages with kvl.pages, or lower kvl.image_max_tokens to (\d+) ",
                      answer["error"]["message"])
        assert m, answer["error"]["message"]
        status, _, answer = chat(srv.port, body(doc, image_max_tokens=int(m.group(2))))
        assert status == 200, answer
        assert len(answer["kvl"]["image_tokens"]) == 20 and answer["usage"]["prompt_tokens"] < 2048
        status, _, answer = chat(srv.port, body(doc, pages=f"1-{m.group(1)}"))
        assert status == 200, answer
    finally:
        assert srv.stop() == 0, srv.log_text()


def test_serve_renders_a_document_page_by_page_letting_other_requests_through(monkeypatch):
    """An image asked for while a long document renders is decoded between its pages, not after them."""
    import asyncio

    from kvl_cli.serve import media as serve_media
    from kvl_cli.serve.fetch import Fetcher, FetchLimits
    from kvl_cli.serve.files import AllowedFolders
    from kvl_cli.serve.protocol import Defaults, ImagePart, parse_chat

    from .serve_util import png_uri

    rendered: list[int] = []
    real = serve_media._render

    def counting(doc, page, max_tokens):  # type: ignore[no-untyped-def]
        image = real(doc, page, max_tokens)
        rendered.append(page.number)
        return image

    monkeypatch.setattr(serve_media, "_render", counting)
    media = serve_media.Media(AllowedFolders([]), Fetcher(FetchLimits()))
    call = parse_chat(body(file_part(pdfs.pdf_bytes(pdfs.scanned_pages(150), share_content=True))), Defaults())

    async def main() -> tuple[int, int]:
        doc = asyncio.create_task(media.build_request(call, "<image>"))
        while len(rendered) < 3:
            await asyncio.sleep(0.01)
        await media.load(ImagePart(png_uri(), "image"), 1024)
        at = len(rendered)
        request = await doc
        return at, len(request.images)

    at, images = asyncio.run(main())
    assert images == 150
    assert at < 50, f"the image waited for {at} of the document's pages"


def test_serve_documents_speak_the_apis_words(scripted, tmp_path):
    from .serve_util import chat, start_server

    srv = start_server(scripted, tmp_path / "serve", "--ctx", "8192")
    locked = pdfs.pdf_bytes(pdfs.mixed_pages(), password="s3cret-pw")
    try:
        status, _, answer = chat(srv.port, body(file_part(locked)))
        err = answer["error"]
        assert status == 400 and err["code"] == "invalid_file" and err["param"] == "messages[0].content[0].file"
        assert "kvl.password" in err["message"] and "--password" not in err["message"]
        status, _, answer = chat(srv.port, body(file_part(locked), password="wrong"))
        assert status == 400 and "kvl.password" in answer["error"]["message"]
        assert "wrong" not in answer["error"]["message"].replace("is wrong", "")
        status, _, answer = chat(srv.port, body(file_part(locked), password="s3cret-pw"))
        assert status == 200, answer
        assert len(answer["kvl"]["image_tokens"]) == 3
        status, _, answer = chat(srv.port, body(file_part(pdfs.pdf_bytes(pdfs.scanned_pages(4))), pages="9"))
        err = answer["error"]
        assert status == 400 and err["param"] == "kvl.pages" and "--pages" not in err["message"]
        assert err["message"].startswith("kvl.pages 9: doc.pdf has 4 pages")
        status, _, answer = chat(srv.port, body(file_part(pdfs.damaged_pdf())))
        assert status == 400 and answer["error"]["code"] == "invalid_file"
        # a PDF sent as application/octet-stream (or any type) is sniffed by its bytes
        status, _, answer = chat(srv.port, body(file_part(pdfs.pdf_bytes(pdfs.scanned_pages(2)), "x.bin",
                                                          "application/octet-stream")))
        assert status == 200, answer
        status, _, answer = chat(srv.port, body(file_part(b"GIF89a not a pdf", "x.gif", "image/gif")))
        assert status == 400 and "not a PDF" in answer["error"]["message"]
        assert "s3cret-pw" not in srv.log_text()
    finally:
        assert srv.stop() == 0, srv.log_text()


# ---- the page budget of kvl ask --------------------------------------------------------------------


def test_page_budget_counts_the_real_room():
    from kvl_cli.run.documents import page_budget, pages_that_fit, prompt_tokens

    prompt = prompt_tokens("q")
    assert pages_that_fit(600, 8192, prompt) >= 2
    assert page_budget(2, 1024, 600, 8192, prompt) >= 8
    assert page_budget(1, 1024, 512, 8192, prompt) >= 8
    with pytest.raises(ContextError) as caught:
        page_budget(300, 1024, 600, 8192, prompt)
    fits = pages_that_fit(600, 8192, prompt)
    assert f"{fits} pages would" in str(caught.value) and "at most 0" not in str(caught.value)
    page_budget(fits, 1024, 600, 8192, prompt)  # the number it names does fit
    with pytest.raises(ContextError, match="not even one page would"):
        page_budget(1, 1024, 64, 8192, prompt)


def test_ask_a_document_at_a_small_ctx(kvl, scripted, tmp_path):
    doc = pdfs.write_pdf(tmp_path / "doc.pdf", pdfs.scanned_pages(4))
    r = kvl("ask", doc, "q", "--ctx", "512", "--dry-run", "--json", *SHORT, *scripted.args())
    assert r.code == 0, r.err
    (rec,) = jsonl(r.out)
    assert len(rec["image_tokens"]) == 4 and rec["prompt_tokens"] < 512


# ---- sidecars -------------------------------------------------------------------------------------


def test_an_images_sidecar_cannot_be_a_pages(kvl, scripted, images, tmp_path):
    col = tmp_path / "col"
    col.mkdir()
    pdfs.write_pdf(col / "a.pdf", pdfs.scanned_pages(2))
    (col / "a.p1.png").write_bytes(images["png"].read_bytes())
    r = kvl("ocr", col, "--sidecar", "txt", *SHORT, *scripted.args())
    assert r.code == 2, r.err
    assert r.err.strip() == (f"kvl: error: --sidecar txt: {col / 'a.p1.png'}'s sidecar {col / 'a.p1.txt'} is also "
                             f"page 1's of {col / 'a.pdf'} (rename the image, or run the two separately with "
                             "different --sidecar-dir)")
    assert not (col / "a.p1.txt").exists()
    (col / "a.p1.png").rename(col / "a.p3.png")  # no page 3's name is taken by a 2-page document: still refused
    r = kvl("ocr", col, "--sidecar", "txt", *SHORT, *scripted.args())
    assert r.code == 2
    (col / "a.p3.png").rename(col / "b.p1.png")
    r = kvl("ocr", col, "--sidecar", "txt", *SHORT, *scripted.args())
    assert r.code == 0, r.err
    assert sorted(p.name for p in col.glob("*.txt")) == ["a.p1.txt", "a.p2.txt", "b.p1.txt"]


# ---- output ---------------------------------------------------------------------------------------


def _pages(renderer, texts: list[str]) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from kvl_cli.engine.reasoning import Section
    from kvl_cli.engine.types import DoneEvent, TextEvent
    from kvl_cli.pages import Page

    from .terminal import RESULT

    for n, text in enumerate(texts, 1):
        renderer.begin("doc.pdf", 1, 1, page=Page(n, len(texts), first=n == 1))
        renderer.event(TextEvent(Section.ANSWER, text))
        result = replace(RESULT, answer=text, thinking="")
        renderer.event(DoneEvent(result))
        renderer.end("doc.pdf", result, {"page": n, "pages": len(texts)})
    renderer.close()


def test_a_form_feed_inside_a_page_does_not_split_it():
    import io

    from kvl_cli.environment import Environment
    from kvl_cli.render import OutputOptions, PlainRenderer

    pipe = io.StringIO()
    _pages(PlainRenderer(OutputOptions(), Environment(stdout=pipe, stderr=io.StringIO(), stdout_isatty=False)),
           ["one\fstill one", "two"])
    assert pipe.getvalue().split("\f") == ["one\nstill one\n", "two\n"]


def test_a_terminal_shows_a_pages_html_looking_text_whole():
    import io

    from kvl_cli.environment import Environment
    from kvl_cli.render import LiveRenderer, OutputOptions

    from .terminal import FakeTTY

    tty = FakeTTY()
    _pages(LiveRenderer(OutputOptions(color=False), Environment(stdout=tty, stderr=io.StringIO())),
           ["<!-- page 9 --> and <b>x</b>", "`<code>` stays"])
    shown = tty.getvalue()
    assert "<!-- page 9 -->" in shown and "<b>x</b>" in shown and "<code>" in shown and "\\<" not in shown


# ---- --pages --------------------------------------------------------------------------------------


def test_pages_takes_ascii_digits_only(kvl, scripted, tmp_path):
    doc = pdfs.write_pdf(tmp_path / "doc.pdf", pdfs.scanned_pages(4))
    for spec in ("\u0663", "1-\u0663", "\uff12"):  # Arabic-Indic 3, fullwidth 2
        r = kvl("ocr", doc, "--pages", spec, *SHORT, *scripted.args())
        assert r.code == 2 and "is not a page or a range" in r.err, (spec, r.err)


def test_pages_on_an_image_says_it_reads_it_whole(kvl, scripted, images, tmp_path):
    doc = pdfs.write_pdf(tmp_path / "doc.pdf", pdfs.scanned_pages(4))
    r = kvl("ocr", doc, images["png"], "--pages", "2", "--json", *SHORT, *scripted.args())
    assert r.code == 0, r.err
    assert [rec.get("page") for rec in jsonl(r.out)] == [2, None]
    assert f"kvl: note: --pages applies to documents only; {images['png']} read whole" in r.err
    r = kvl("ocr", doc, "--pages", "2", "--json", *SHORT, *scripted.args())
    assert "note" not in r.err


# ---- error wording --------------------------------------------------------------------------------


def test_a_damaged_page_or_tiff_is_said_once_in_the_documented_words(kvl, scripted, tmp_path):
    from PIL import Image

    from .pdfs import _assemble

    objs = {1: b"<< /Type /Catalog /Pages 2 0 R >>", 2: b"<< /Type /Pages /Kids [2 0 R 3 0 R] /Count 2 >>",
            3: b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 100 100] >>"}  # page 1 is the page tree itself
    loop = tmp_path / "loop.pdf"
    loop.write_bytes(_assemble(objs, b"x" * 16, None))
    r = kvl("ocr", loop, *SHORT, *scripted.args())
    lines = [line for line in r.err.splitlines() if "damaged" in line]
    assert lines and all(line.count(str(loop)) == 1 and "Error" not in line for line in lines), r.err
    assert any(f"{loop}: page " in line and " is damaged (PDFium could not read it)" in line for line in lines), r.err
    frames = [Image.new("RGB", (64, 48), (i * 80, 0, 0)) for i in range(3)]
    tif = tmp_path / "m3.tif"
    frames[0].save(tif, save_all=True, append_images=frames[1:])
    tif.write_bytes(tif.read_bytes()[:200])
    r = kvl("ocr", tif, *SHORT, *scripted.args())
    assert r.code == 3, r.err
    assert "Error" not in r.err and "Missing" not in r.err and "is damaged (Pillow could not read it)" in r.err


# ---- sniffed documents ----------------------------------------------------------------------------


def test_a_pdf_at_a_url_that_does_not_say_so(kvl, scripted, images, tmp_path):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    files = {"/pdf/2501.01234": pdfs.pdf_bytes(pdfs.scanned_pages(3)), "/get?id=7": images["png"].read_bytes(),
             "/img/photo.png": pdfs.pdf_bytes(pdfs.scanned_pages(1))}
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            hits.append(self.path)
            data = files[self.path]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        r = kvl("ocr", base + "/pdf/2501.01234", base + "/get?id=7", base + "/img/photo.png", "--json", *SHORT,
                *scripted.args())
    finally:
        server.shutdown()
    recs = jsonl(r.out)
    assert [(x["input"], x.get("page")) for x in recs[:4]] == [(base + "/pdf/2501.01234", n) for n in (1, 2, 3)] \
        + [(base + "/get?id=7", None)]
    assert recs[3]["error"] is None
    assert "a PDF where kvl expected an image" in recs[4]["error"] and r.code == 5
    assert hits.count("/pdf/2501.01234") == 1  # fetched once, its pages read from the kept copy


# ---- --text-layer records -------------------------------------------------------------------------


def test_text_layer_records_name_the_model_only_where_one_read(kvl, scripted, tmp_path):
    from .pdfs import PageSpec

    doc = pdfs.write_pdf(tmp_path / "half.pdf", [PageSpec(text="Born digital"), *pdfs.scanned_pages(1)])
    r = kvl("ocr", doc, "--text-layer", "--json", *SHORT, *scripted.args())
    a, b = jsonl(r.out)
    assert (a["source"], a["model"]) == ("text", None)
    assert b["source"] == "ocr" and b["model"]
    born = pdfs.write_pdf(tmp_path / "born.pdf", [PageSpec(text="one"), PageSpec(text="two")])
    r = kvl("ocr", born, "--text-layer", "--json", "--model", tmp_path / "none.gguf", "--mmproj", tmp_path / "n.gguf")
    assert r.code == 0, r.err
    assert [(x["source"], x["model"]) for x in jsonl(r.out)] == [("text", None), ("text", None)]


def test_ask_records_name_the_documents_in_the_prompt(kvl, scripted, images, tmp_path):
    doc = pdfs.write_pdf(tmp_path / "doc.pdf", pdfs.scanned_pages(2))
    r = kvl("ask", doc, images["png"], "q", "--json", *SHORT, *scripted.args())
    assert r.code == 0, r.err
    (rec,) = jsonl(r.out)
    assert rec["images"] == [str(doc), str(images["png"])] and rec["pages_in_prompt"] == [1, 2]
