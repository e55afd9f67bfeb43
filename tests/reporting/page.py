"""Reading a report page back: its numbers (``<data value data-ref>``), its model strings
(class ``name``), its verbatim messages (class ``message``) and the rest of its visible text."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

VOID = {"br", "img", "meta", "link", "hr", "input", "source", "col", "wbr"}


@dataclass
class Page:
    numbers: list[tuple[str, str, str]] = field(default_factory=list)  # (value, ref, shown)
    names: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    prose: list[str] = field(default_factory=list)  # visible text outside the three above
    urls: list[str] = field(default_factory=list)  # every src and href
    images: list[str] = field(default_factory=list)  # every img src


class _Reader(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self.stack: list[dict] = []  # one entry per open element: kind and collected text

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if key in attrs:
                self.page.urls.append(attrs[key])
        if tag == "img":
            self.page.images.append(attrs.get("src", ""))
        if tag in VOID:
            return
        classes = (attrs.get("class") or "").split()
        kind = ("data" if tag == "data" else "name" if "name" in classes
                else "message" if "message" in classes
                else "hidden" if tag in ("style", "script", "title", "head") else None)
        self.stack.append({"tag": tag, "kind": kind, "attrs": attrs, "text": []})

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        while self.stack:
            entry = self.stack.pop()
            text = "".join(entry["text"])
            if entry["kind"] == "data":
                self.page.numbers.append((entry["attrs"]["value"], entry["attrs"]["data-ref"],
                                          text))
            elif entry["kind"] == "name":
                self.page.names.append(text)
            elif entry["kind"] == "message":
                self.page.messages.append(text)
            if entry["tag"] == tag:
                return

    def handle_data(self, data):
        for entry in reversed(self.stack):
            if entry["kind"] is not None:
                entry["text"].append(data)
                return
        self.page.prose.append(data)


def read(html: str) -> Page:
    reader = _Reader()
    reader.feed(html)
    reader.close()
    return reader.page
