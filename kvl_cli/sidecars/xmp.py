"""XMP sidecars as photo managers read them (digiKam, darktable, Lightroom, exiftool).

The caption (OCR: the text) goes into ``dc:description`` as an ``rdf:Alt`` with an ``x-default``
item; kvl's provenance (task, model, date, version) goes into a namespace of its own. An existing
sidecar is merged with a real XML parser, never pasted into: every other field (a photographer's
``xmp:Rating``, ``dc:subject`` keywords, other languages of the description) stays as it was, and
only kvl's own fields and the ``x-default`` description change. A sidecar that does not parse is
left alone (``XmpError``): kvl does not replace what it cannot read.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET

X = "adobe:ns:meta/"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
DC = "http://purl.org/dc/elements/1.1/"
XML = "http://www.w3.org/XML/1998/namespace"
# a name, not an address: the .invalid domain never resolves, so it can belong to nobody else
KVL = "http://ns.kvl.invalid/xmp/1.0/"
PREFIXES = {"x": X, "rdf": RDF, "dc": DC, "kvl": KVL, "xmp": "http://ns.adobe.com/xap/1.0/"}
KVL_FIELDS = ("task", "model", "date", "version")

# what XML 1.0 cannot hold (C0 controls but tab, newline and return; lone surrogates; U+FFFE, U+FFFF):
# a model's answer may carry them, a parser refuses a file that does
XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
MAX_DEPTH = 100  # XMP is a few levels deep; deeper is hostile (and ElementTree writes it recursively)

PACKET_BEGIN = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
PACKET_END = '\n<?xpacket end="w"?>\n'


class XmpError(ValueError):
    """An existing sidecar that is not XMP kvl can merge into."""


def xml_text(text: str) -> str:
    """``text`` without the characters XML cannot hold (see ``XML_ILLEGAL``)."""
    return XML_ILLEGAL.sub("", text)


def _q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


def parse(data: bytes) -> ET.Element:
    """The sidecar's root element; the namespace prefixes it uses are kept for writing it back."""
    try:
        root: ET.Element | None = None
        depth = 0
        for event, item in ET.iterparse(io.BytesIO(data), events=("start-ns", "start", "end")):
            if event == "start-ns":
                _keep_prefix(*item)
            elif event == "start":
                depth += 1
                if depth > MAX_DEPTH:
                    raise XmpError(f"elements nested deeper than {MAX_DEPTH} levels")
            else:
                depth -= 1
                root = item
    except (ET.ParseError, RecursionError) as exc:
        raise XmpError(f"not well-formed XML ({exc})") from None
    if root is None or _rdf(root) is None:
        raise XmpError("no rdf:RDF element in it")
    return root


def _keep_prefix(prefix: str, uri: str) -> None:
    if prefix and not prefix.startswith("ns") and prefix != "xml":
        try:
            ET.register_namespace(prefix, uri)
        except ValueError:
            pass  # a prefix ElementTree reserves: written as ns0 and the like, the same namespace


def _rdf(root: ET.Element) -> ET.Element | None:
    return root if root.tag == _q(RDF, "RDF") else root.find(f".//{_q(RDF, 'RDF')}")


def new_packet() -> ET.Element:
    meta = ET.Element(_q(X, "xmpmeta"))
    ET.SubElement(meta, _q(RDF, "RDF"))
    return meta


def kvl_task(data: bytes) -> str | None:
    """The task kvl wrote into this sidecar (None: kvl wrote none, or it does not parse)."""
    try:
        rdf = _rdf(parse(data))
    except XmpError:
        return None
    assert rdf is not None
    for desc in rdf.iter(_q(RDF, "Description")):
        task = desc.get(_q(KVL, "task")) or desc.findtext(_q(KVL, "task"))
        if task:
            return task
    return None


def merge(existing: bytes | None, description: str, fields: dict[str, str]) -> bytes:
    """``existing`` (or a new packet) with ``dc:description``'s x-default set to ``description`` and
    kvl's ``fields`` replaced; everything else kept."""
    for prefix, uri in PREFIXES.items():
        ET.register_namespace(prefix, uri)
    root = parse(existing) if existing else new_packet()
    rdf = _rdf(root)
    assert rdf is not None
    descs = rdf.findall(_q(RDF, "Description"))
    if not descs:
        descs = [ET.SubElement(rdf, _q(RDF, "Description"), {_q(RDF, "about"): ""})]
    for desc in descs:
        _drop_kvl(desc)
    _set_description(descs, xml_text(description))
    for name, value in fields.items():
        ET.SubElement(descs[0], _q(KVL, name)).text = xml_text(value)
    ET.indent(root, space=" ")
    text = ET.tostring(root, encoding="unicode")
    return (PACKET_BEGIN + text + PACKET_END).encode("utf-8")


def _drop_kvl(desc: ET.Element) -> None:
    for child in list(desc):
        if child.tag.startswith(f"{{{KVL}}}"):
            desc.remove(child)
    for name in [a for a in desc.attrib if a.startswith(f"{{{KVL}}}")]:
        del desc.attrib[name]


def _set_description(descs: list[ET.Element], text: str) -> None:
    """The x-default item of the first ``dc:description`` (made where there is none); a description
    written as an attribute (not a language alternative, as XMP wants it) becomes one."""
    tag = _q(DC, "description")
    found = next((d.find(tag) for d in descs if d.find(tag) is not None), None)
    for desc in descs:
        old = desc.attrib.pop(tag, None)
        if old is not None and found is None:
            found = ET.SubElement(desc, tag)
    if found is None:
        found = ET.SubElement(descs[0], tag)
    alt = found.find(_q(RDF, "Alt"))
    if alt is None:
        for child in list(found):
            found.remove(child)
        found.text = None
        alt = ET.SubElement(found, _q(RDF, "Alt"))
    lang = _q(XML, "lang")
    item = next((li for li in alt.findall(_q(RDF, "li")) if li.get(lang) == "x-default"), None)
    if item is None:
        item = ET.Element(_q(RDF, "li"), {lang: "x-default"})
        alt.insert(0, item)
    for child in list(item):
        item.remove(child)
    item.text = text
