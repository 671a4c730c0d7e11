"""Daily page Lambda: last night's detections as one static, mobile-friendly HTML page in S3.

Runs every morning (EventBridge schedule); ``{"night": "YYYYMMDD"}`` in the event rebuilds any
night. Reads ``detections/<night>/*/*.json`` and writes ``site/<night>.html`` and, when it is the
newest night, ``site/index.html``.

Previews are *relative links* (``../previews/<night>/<obs>/<id>.jpg``), not presigned URLs: a
URL presigned with the Lambda role's temporary credentials dies with those credentials (hours),
and these pages are an archive. Relative links work wherever ``site/`` and ``previews/`` are
served together: the template's CloudFront distribution (the bucket itself stays private), or a
local ``aws s3 sync`` of both prefixes.

Grouping, for the operator's eye:
- *sequences*: detections of one observatory in consecutive frames (gap ≤ SEQUENCE_GAP_S,
  default 75 s = 2.5 AllSky exposures of 30 s) are a moving object crossing several frames —
  likely a satellite or aircraft, since a meteor lasts about a second;
- *coincidences*: detections from different observatories within COINCIDENCE_WINDOW_S (default
  30 s): likely the same meteor seen from two sites. The window is one exposure because frame
  times are exposure starts and two cameras' 30 s exposures are not synchronised.

Every piece of text from a record is HTML-escaped, and preview URLs are rebuilt from names that
pass the ingest whitelist, so a hostile observatory name cannot inject markup or links.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import boto3

from cloud.ingest import DETECTIONS, PREVIEWS, Rejected, safe_segment

log = logging.getLogger(__name__)
log.setLevel(logging.INFO)

SITE = "site"
MAX_RECORDS = 5000  # a page bigger than this is unreadable anyway; keeps the Lambda bounded
NIGHTS_LINKED = 30
_NIGHT = re.compile(r"[0-9]{8}")
_PAGE = re.compile(rf"{SITE}/([0-9]{{8}})\.html")


@dataclass(frozen=True)
class Detection:
    observatory: str
    id: str
    night: str
    captured_utc: datetime
    captured_local: datetime
    score: float
    model: str
    suppressed: str | None
    width: int
    height: int
    flags: tuple[str, ...] = ()

    @property
    def preview_url(self) -> str:
        """Relative to a page in site/; rebuilt from whitelisted names, never from the record."""
        parts = (PREVIEWS, self.night, self.observatory, f"{self.id}.jpg")
        return "../" + "/".join(quote(p) for p in parts)


def parse_record(record: Mapping[str, Any]) -> Detection:
    """A stored record → Detection; ValueError/Rejected/KeyError/TypeError when it is not one."""
    preview = record.get("preview") or {}
    captured_utc = datetime.fromisoformat(record["captured_utc"])
    if captured_utc.tzinfo is None:
        captured_utc = captured_utc.replace(tzinfo=UTC)
    suppressed = record.get("suppressed")
    model = record.get("model") or {}
    return Detection(
        observatory=safe_segment(record["observatory"], "observatory"),
        id=safe_segment(record["id"], "id"),
        night=safe_segment(record["night"], "night"),
        captured_utc=captured_utc.astimezone(UTC),
        captured_local=datetime.fromisoformat(record["captured_local"]),
        score=float(record["score"]),
        model=f"{model.get('name', '?')} {model.get('version', '?')}",
        suppressed=None if suppressed is None else str(suppressed),
        width=int(preview.get("width", 448)),
        height=int(preview.get("height", 224)),
        flags=tuple(str(f) for f in record.get("flags") or ()),
    )


# ---------------------------------------------------------------------------- grouping


def sequences(detections: Iterable[Detection], gap_s: float) -> list[list[Detection]]:
    """Per observatory, chains of detections each within ``gap_s`` of the previous, in time order.

    Singletons are chains of one. Returned sorted by the first detection's time.
    """
    by_obs: dict[str, list[Detection]] = defaultdict(list)
    for d in detections:
        by_obs[d.observatory].append(d)
    chains: list[list[Detection]] = []
    for items in by_obs.values():
        items.sort(key=lambda d: d.captured_utc)
        chain = [items[0]]
        for d in items[1:]:
            if (d.captured_utc - chain[-1].captured_utc).total_seconds() <= gap_s:
                chain.append(d)
            else:
                chains.append(chain)
                chain = [d]
        chains.append(chain)
    chains.sort(key=lambda c: c[0].captured_utc)
    return chains


def coincidences(detections: Sequence[Detection], window_s: float) -> list[list[Detection]]:
    """Clusters linking detections of *different* observatories within ``window_s`` seconds.

    Single linkage (union-find over cross-observatory pairs); only clusters spanning at least
    two observatories are returned, each in time order, the list sorted by time.
    """
    items = sorted(detections, key=lambda d: d.captured_utc)
    parent = list(range(len(items)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(items):
        for j in range(i + 1, len(items)):
            b = items[j]
            if (b.captured_utc - a.captured_utc).total_seconds() > window_s:
                break
            if a.observatory != b.observatory:
                parent[root(j)] = root(i)
    clusters: dict[int, list[Detection]] = defaultdict(list)
    for i, d in enumerate(items):
        clusters[root(i)].append(d)
    found = [c for c in clusters.values() if len({d.observatory for d in c}) > 1]
    found.sort(key=lambda c: c[0].captured_utc)
    return found


# ---------------------------------------------------------------------------- rendering

CSS = """
:root{color-scheme:dark;--bg:#0b0f1a;--fg:#e6e9f0;--mut:#8a93a6;--card:#151b2b;--acc:#ffcc4d}
*{box-sizing:border-box}
body{margin:0;padding:0 .8rem 2rem;background:var(--bg);color:var(--fg);
 font:15px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
header,main,footer{max-width:1200px;margin:0 auto}
h1{font-size:1.35rem;margin:1rem 0 .3rem}h2{font-size:1.15rem;margin:1.6rem 0 .4rem}
a{color:var(--acc)}nav a{margin-right:.8rem}
.summary,.meta,footer{color:var(--mut)}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:.7rem}
.card{margin:0;background:var(--card);border-radius:8px;overflow:hidden}
.card img{display:block;width:100%;height:auto;background:#000}
.card figcaption{padding:.4rem .6rem;font-size:.9rem}
.card.suppressed{opacity:.45;filter:grayscale(1)}
.score{font-weight:600;color:var(--acc)}
.tag{display:inline-block;padding:0 .4rem;border-radius:4px;background:#33415c;font-size:.8rem}
.group{grid-column:1/-1;border:1px dashed var(--mut);border-radius:8px;padding:.5rem}
.group.coincidence{border:2px solid var(--acc)}
.group .label{margin:0 0 .4rem;font-size:.9rem}
details{margin-top:.8rem}summary{cursor:pointer;color:var(--mut)}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _hms(d: Detection) -> str:
    return d.captured_local.strftime("%H:%M:%S")


def _card(d: Detection, *, show_observatory: bool = False) -> str:
    cls = "card suppressed" if d.suppressed else "card"
    tags = "".join(f' <span class="tag">{_e(t)}</span>' for t in (d.suppressed, *d.flags) if t)
    who = f"<b>{_e(d.observatory)}</b> · " if show_observatory else ""
    return (
        f'<figure class="{cls}" data-observatory="{_e(d.observatory)}" data-id="{_e(d.id)}">'
        f'<a href="{_e(d.preview_url)}"><img src="{_e(d.preview_url)}" width="{d.width}" '
        f'height="{d.height}" loading="lazy" alt="{_e(f"{d.observatory} {d.id}")}"></a>'
        f"<figcaption>{who}<time datetime=\"{_e(d.captured_utc.isoformat())}\" "
        f'title="{_e(d.captured_utc.strftime("%H:%M:%S UTC"))}">{_e(_hms(d))}</time> · '
        f'score <span class="score">{d.score:.2f}</span>{tags}'
        f'<br><span class="meta">model {_e(d.model)}</span></figcaption></figure>'
    )


def _span(items: Sequence[Detection], utc: bool = False) -> str:
    def fmt(d: Detection) -> str:
        return d.captured_utc.strftime("%H:%M:%S UTC") if utc else _hms(d)

    first, last = fmt(items[0]), fmt(items[-1])
    return first if first == last else f"{first}–{last}"


def _sequence_block(chain: list[Detection]) -> str:
    if len(chain) == 1:
        return _card(chain[0])
    label = (
        f"{len(chain)} consecutive frames, {_e(_span(chain))} — "
        "likely a satellite or aircraft"
    )
    cards = "".join(_card(d) for d in chain)
    return (
        f'<div class="group sequence"><p class="label">{label}</p>'
        f'<div class="grid">{cards}</div></div>'
    )


def _observatory_section(name: str, items: list[Detection], gap_s: float) -> str:
    chains = sequences(items, gap_s)
    shown = [c for c in chains if any(d.suppressed is None for d in c)]
    hidden = [c for c in chains if all(d.suppressed is not None for d in c)]
    alerts = sum(d.suppressed is None for d in items)
    parts = [
        f'<section class="observatory" id="obs-{_e(name)}"><h2>{_e(name)}</h2>',
        f'<p class="meta">{alerts} alert(s), {len(items) - alerts} suppressed, '
        f"{sum(len(c) > 1 for c in chains)} multi-frame sequence(s)</p>",
    ]
    if shown:
        parts.append(f'<div class="grid">{"".join(_sequence_block(c) for c in shown)}</div>')
    if hidden:
        count = sum(len(c) for c in hidden)
        parts.append(
            f"<details class=\"suppressed\"><summary>Suppressed ({count})</summary>"
            f'<div class="grid">{"".join(_sequence_block(c) for c in hidden)}</div></details>'
        )
    parts.append("</section>")
    return "".join(parts)


def _coincidence_block(cluster: list[Detection]) -> str:
    names = sorted({d.observatory for d in cluster})
    seconds = (cluster[-1].captured_utc - cluster[0].captured_utc).total_seconds()
    label = (
        f"{len(names)} observatories within {seconds:.0f} s ({_e(_span(cluster, utc=True))}): "
        f"{_e(', '.join(names))} — possibly the same meteor"
    )
    cards = "".join(_card(d, show_observatory=True) for d in cluster)
    return (
        f'<div class="group coincidence"><p class="label">{label}</p>'
        f'<div class="grid">{cards}</div></div>'
    )


def _iso(night: str) -> str:
    return f"{night[:4]}-{night[4:6]}-{night[6:]}"


def _night_label(night: str) -> str:
    return datetime.strptime(night, "%Y%m%d").strftime("%a %d %b %Y")


def render_page(
    night: str,
    detections: Sequence[Detection],
    nights: Sequence[str] = (),
    *,
    gap_s: float = 75.0,
    window_s: float = 30.0,
    generated: datetime | None = None,
) -> str:
    """The whole page for one night. ``nights``: the nights that have a page (for links)."""
    generated = generated or datetime.now(UTC)
    alerts = sum(d.suppressed is None for d in detections)
    by_obs: dict[str, list[Detection]] = defaultdict(list)
    for d in detections:
        by_obs[d.observatory].append(d)
    clusters = coincidences(detections, window_s)

    others = sorted(set(nights) - {night})
    earlier = [n for n in others if n < night]
    later = [n for n in others if n > night]
    nav = []
    if earlier:
        nav.append(f'<a rel="prev" href="{earlier[-1]}.html">← {_e(_night_label(earlier[-1]))}</a>')
    if later:
        nav.append(f'<a rel="next" href="{later[0]}.html">{_e(_night_label(later[0]))} →</a>')
    nav.append('<a href="index.html">latest</a>')

    body = [
        "<header>",
        f"<h1>Meteor detections · night of {_e(_night_label(night))}</h1>",
        f'<p class="summary"><span id="count">{len(detections)}</span> detection(s): '
        f"{alerts} alert(s), {len(detections) - alerts} suppressed, from "
        f"{len(by_obs)} observatory(ies); {len(clusters)} multi-observatory coincidence(s).</p>",
        f"<nav>{''.join(nav)}</nav>",
        "</header><main>",
    ]
    if not detections:
        body.append("<p>No detections this night.</p>")
    if clusters:
        body.append('<section id="coincidences"><h2>Seen from several observatories</h2>')
        body.append('<div class="grid">')
        body.extend(_coincidence_block(c) for c in clusters)
        body.append("</div></section>")
    for name in sorted(by_obs):
        body.append(_observatory_section(name, by_obs[name], gap_s))
    recent = sorted({*nights, night}, reverse=True)[:NIGHTS_LINKED]
    links = " ".join(
        f"<b>{_iso(n)}</b>" if n == night else f'<a href="{n}.html">{_iso(n)}</a>' for n in recent
    )
    body.append(
        f'</main><footer><h2>Nights</h2><p class="nights">{links}</p>'
        f"<p>Generated {_e(generated.strftime('%Y-%m-%d %H:%M UTC'))} by guaita. "
        "Times are the observatory's local time; hover for UTC.</p></footer>"
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "img-src 'self'; style-src 'unsafe-inline'\">"
        f"<title>guaita · {_e(_night_label(night))}</title><style>{CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


# ---------------------------------------------------------------------------- S3 and handler


def default_night(now: datetime | None = None) -> str:
    """The night that ended this morning: AllSky's folder date is the evening's (UTC − 12 h)."""
    now = now or datetime.now(UTC)
    return (now.astimezone(UTC) - timedelta(hours=12)).strftime("%Y%m%d")


def check_night(night: Any) -> str:
    if not isinstance(night, str) or not _NIGHT.fullmatch(night):
        raise ValueError(f"night must be YYYYMMDD, got {night!r}")
    datetime.strptime(night, "%Y%m%d")
    return night


def load_detections(s3: Any, bucket: str, night: str) -> list[Detection]:
    keys: list[str] = []
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=f"{DETECTIONS}/{night}/"):
        keys.extend(o["Key"] for o in page.get("Contents", ()) if o["Key"].endswith(".json"))
    if len(keys) > MAX_RECORDS:
        log.warning("night %s has %d records; showing the first %d", night, len(keys), MAX_RECORDS)
        keys = sorted(keys)[:MAX_RECORDS]

    def fetch(key: str) -> Detection | None:
        try:
            record = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            return parse_record(record)
        except (ValueError, KeyError, TypeError, Rejected) as exc:
            log.warning("skipping %s: %s", key, exc)
            return None

    with ThreadPoolExecutor(max_workers=16) as pool:
        return [d for d in pool.map(fetch, keys) if d is not None]


def list_pages(s3: Any, bucket: str) -> list[str]:
    nights = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{SITE}/"):
        for o in page.get("Contents", ()):
            m = _PAGE.fullmatch(o["Key"])
            if m:
                nights.append(m.group(1))
    return sorted(nights)


def build(
    s3: Any, bucket: str, night: str, *, gap_s: float = 75.0, window_s: float = 30.0
) -> dict[str, Any]:
    """Render and upload one night's page (and index.html if it is the newest)."""
    check_night(night)
    detections = load_detections(s3, bucket, night)
    nights = list_pages(s3, bucket)
    page = render_page(night, detections, nights, gap_s=gap_s, window_s=window_s).encode()
    written = [f"{SITE}/{night}.html"]
    if not nights or night >= nights[-1]:
        written.append(f"{SITE}/index.html")
    for key in written:
        s3.put_object(
            Bucket=bucket, Key=key, Body=page, ContentType="text/html; charset=utf-8",
            CacheControl="max-age=300",
        )
    log.info("night %s: %d detection(s) → %s", night, len(detections), ", ".join(written))
    return {"night": night, "detections": len(detections), "written": written}


def handler(event: Any, context: Any = None) -> dict[str, Any]:
    """EventBridge schedule entry point; ``{"night": "YYYYMMDD"}`` rebuilds that night."""
    night = event.get("night") if isinstance(event, dict) else None
    return build(
        boto3.client("s3"),
        os.environ["BUCKET"],
        check_night(night) if night else default_night(),
        gap_s=float(os.environ.get("SEQUENCE_GAP_S", "75")),
        window_s=float(os.environ.get("COINCIDENCE_WINDOW_S", "30")),
    )
