"""Polling Atom or RSS feeds of CAP 1.2 alerts (``cap.feeds`` in the scheduler config).

Each entry of the feed either links to a CAP message (Atom ``<link href>``, RSS ``<link>``) or holds
one inline (an ``<alert>`` inside Atom ``<content>``). New links are fetched and handed to the intake
under the feed's ``source`` name, which the trust policy (``cap.trusted_sources``) judges like a
token name. The intake's own duplicate check (``sender,identifier,sent``) makes a restart or an
entry that stays in the feed harmless; links already handled are remembered in memory too, so a
steady feed costs one request per interval. Feeds and messages are parsed with defusedxml (no DTDs,
no entities) and read with size limits.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any
from urllib.parse import urljoin
from xml.etree.ElementTree import Element, ParseError, tostring

import httpx
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from scheduler.config import CapFeedEntry

from .cap import MAX_BYTES, NS
from .intake import CapIntake, CapRefused

log = logging.getLogger(__name__)

ATOM = "{http://www.w3.org/2005/Atom}"
MAX_FEED_BYTES = 4 * 1024 * 1024
MAX_ENTRIES = 200
REMEMBER = 5000


class FeedError(Exception):
    pass


def feed_items(raw: bytes, base_url: str) -> list[str | bytes]:
    """The CAP links (absolute URLs) and inline alerts (bytes) of an Atom or RSS feed, oldest first."""
    try:
        root = fromstring(raw, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (DefusedXmlException, ParseError) as exc:
        raise FeedError(f"not a feed: {type(exc).__name__}: {exc}") from exc
    out: list[str | bytes] = []
    if root.tag == ATOM + "feed":
        for entry in root.findall(ATOM + "entry")[:MAX_ENTRIES]:
            inline = entry.find(f"{ATOM}content/{{{NS}}}alert")
            if inline is not None:
                out.append(tostring(inline, encoding="utf-8"))
                continue
            href = _atom_link(entry)
            if href:
                out.append(urljoin(base_url, href))
    elif root.tag == "rss":
        for item in root.findall("channel/item")[:MAX_ENTRIES]:
            link = (item.findtext("link") or "").strip()
            enclosure = item.find("enclosure")
            if enclosure is not None and enclosure.get("url"):
                link = enclosure.get("url", "")
            if link:
                out.append(urljoin(base_url, link))
    else:
        raise FeedError(f"the root element is {str(root.tag)[:100]}, not an Atom <feed> or RSS <rss>")
    out.reverse()  # feeds list the newest first; an Update must come after its Alert
    return out


def _atom_link(entry: Element) -> str | None:
    links = entry.findall(ATOM + "link")
    for link in links:  # prefer the link that says it is CAP
        if "cap" in (link.get("type") or "") and link.get("href"):
            return link.get("href")
    for link in links:
        if link.get("rel", "alternate") == "alternate" and link.get("href"):
            return link.get("href")
    return None


async def _get(client: httpx.AsyncClient, url: str, limit: int) -> bytes:
    async with client.stream("GET", url) as resp:
        if resp.status_code != 200:
            raise FeedError(f"{url}: HTTP {resp.status_code}")
        body = bytearray()
        async for chunk in resp.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise FeedError(f"{url}: larger than {limit} bytes")
        return bytes(body)


class FeedPoller:
    def __init__(self, feed: CapFeedEntry, intake: CapIntake, *, client: httpx.AsyncClient | None = None) -> None:
        self.feed = feed
        self.intake = intake
        self._client = client
        self._done: OrderedDict[str, None] = OrderedDict()
        self.polls = 0
        self.errors = 0
        self.submitted = 0
        self.last_error: str | None = None

    def _remember(self, url: str) -> None:
        self._done[url] = None
        while len(self._done) > REMEMBER:
            self._done.popitem(last=False)

    async def poll_once(self, client: httpx.AsyncClient) -> list[dict[str, Any]]:
        """Fetch the feed and submit what is new; the intake's answers."""
        self.polls += 1
        raw = await _get(client, self.feed.url, MAX_FEED_BYTES)
        answers: list[dict[str, Any]] = []
        for item in feed_items(raw, self.feed.url):
            if isinstance(item, str):
                if item in self._done:
                    continue
                try:
                    message = await _get(client, item, MAX_BYTES)
                except (FeedError, httpx.HTTPError) as exc:
                    self.errors += 1
                    self.last_error = str(exc)
                    log.warning("CAP feed %s: %s", self.feed.source, exc)
                    continue
            else:
                message = item
            try:
                outcome = await self.intake.submit(message, f"feed:{self.feed.source}")
                answers.append(outcome.answer())
                self.submitted += 1
            except CapRefused as exc:
                self.errors += 1
                self.last_error = str(exc)
                log.warning("CAP feed %s: refused %s: %s", self.feed.source, item if isinstance(item, str) else
                            "an inline alert", exc)
            if isinstance(item, str):
                self._remember(item)
        return answers

    async def run(self) -> None:
        client = self._client or httpx.AsyncClient(timeout=httpx.Timeout(20.0), follow_redirects=True,
                                                   headers={"User-Agent": "loaxa-cap-intake"})
        try:
            while True:
                try:
                    await self.poll_once(client)
                except (FeedError, httpx.HTTPError) as exc:
                    self.errors += 1
                    self.last_error = str(exc)
                    log.warning("CAP feed %s (%s): %s", self.feed.source, self.feed.url, exc)
                except Exception:
                    self.errors += 1
                    log.exception("CAP feed %s failed; polling again later", self.feed.source)
                await asyncio.sleep(self.feed.interval_s)
        finally:
            if self._client is None:
                await client.aclose()
