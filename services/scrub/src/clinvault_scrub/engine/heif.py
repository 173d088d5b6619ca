"""HEIF care scrub: a container rewrite that keeps the primary image's coded bytes exactly.

The file is rebuilt as ftyp, one meta and one mdat. The meta keeps the primary item and what
it needs to render (the tiles of a grid, overlay or identity derivation; its alpha plane), the
item properties on a whitelist (several rebuilt: no item names, no text) and nothing else; the
mdat holds only the kept items' extents, copied byte for byte. A file this rewriter does not
handle raises HeifUnsupported and the caller re-encodes instead.

Parsing is bounded: box walking is iterative and only at the fixed levels the format defines
(top level, meta, iinf, iref, iprp, ipco), every count is capped, every offset checked.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from clinvault_scrub.engine import exif as exif_mod
from clinvault_scrub.engine.containers import ContainerScrub, note_removed
from clinvault_scrub.engine.icc import clean_icc
from clinvault_scrub.engine.model import Rejected

# The reasons HeifUnsupported gives: fixed texts, never file content.
SEQUENCE = "image sequence"
PRIMARY_TYPE = "primary item of an unsupported type"
NESTED = "derived image of derived images"
ITEM_REFERENCE = "item data built from another item"
EXTERNAL = "item data in another file"
PROTECTED = "protected item"
ESSENTIAL = "essential property this rewriter does not know"
HANDLER = "meta handler is not pict"
VERSION = "box version this rewriter does not know"
SEI = "coded data carries units that are not picture data (SEI, filler, reserved)"
UNSUPPORTED_REASONS = frozenset(
    {
        SEI,
        SEQUENCE,
        PRIMARY_TYPE,
        NESTED,
        ITEM_REFERENCE,
        EXTERNAL,
        PROTECTED,
        ESSENTIAL,
        HANDLER,
        VERSION,
    }
)


class HeifUnsupported(Exception):
    """A valid-looking HEIF this rewriter does not handle; the message is one of
    UNSUPPORTED_REASONS. The caller falls back to re-encoding."""


# Coded image items whose bytes we copy: HEVC, whose units are checked one by one (see
# _refuse_non_picture_units). A 'jpeg' item (APP segments) and an 'av01' item (metadata OBUs)
# are left to the re-encode: their streams can carry text this rewrite does not parse.
_CODED = {b"hvc1"}
_DERIVED = {b"grid", b"iovl", b"iden"}
# Item types that are images (dropped ones are reported as extra images, not metadata).
_IMAGE_TYPES = _CODED | _DERIVED | {
    b"av01", b"jpeg", b"hvt1", b"lhv1", b"avc1", b"vvc1", b"j2k1", b"unci", b"tmap", b"mski",
    b"pict",
}  # fmt: skip
_ALPHA_URNS = {b"urn:mpeg:hevc:2015:auxid:1", b"urn:mpeg:mpegB:cicp:systems:auxiliary:alpha"}
# Item properties needed to render that carry no text. Fixed-size ones are cut to their size
# (anything after it could be anything); the variable ones are rebuilt below.
_FIXED_SIZES = {
    b"ispe": 12, b"irot": 1, b"imir": 1, b"clap": 32, b"pasp": 8, b"rloc": 12, b"lsel": 2,
    b"a1op": 1, b"clli": 4, b"mdcv": 24, b"amve": 8,
}  # fmt: skip
_PROPERTIES = set(_FIXED_SIZES) | {b"hvcC", b"av1C", b"pixi", b"colr", b"auxC", b"a1lx", b"cclv"}
_HEVC_PARAMETER_SETS = {32, 33, 34}  # VPS, SPS, PPS; SEI arrays can carry user text
# HEVC NAL unit types a coded item may hold: the defined picture (VCL) types, parameter
# sets, access unit delimiter, end of sequence and of bitstream. SEI (39, 40), filler data
# (38) and the reserved and unspecified types can carry any bytes and decode to nothing.
_HEVC_PICTURE_UNITS = {*range(0, 10), *range(16, 22), 32, 33, 34, 35, 36, 37}
_MAX_AUX_SUBTYPE = 64  # an alpha SEI is a few bytes
_KEPT_REFERENCES = {b"dimg", b"auxl", b"prem"}
_PADDING = {b"free", b"skip", b"wide"}
_ONCE = {b"hdlr", b"pitm", b"iinf", b"iloc", b"iref", b"iprp", b"idat"}  # in one meta box
# Bounds for hostile input, beyond max_items: real files have a handful of each per item.
_MAX_BOXES = 100_000
_MAX_PROPERTIES = 10_000
_MAX_EXTENTS = 1024  # per item
_MAX_BRANDS = 64


def _box(btype: bytes, body: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(body), btype) + body


def _full_box(btype: bytes, version: int, flags: int, body: bytes) -> bytes:
    return _box(btype, struct.pack(">I", (version << 24) | flags) + body)


# The data information the output carries: one reference, to this file (flag 1).
_DINF = _box(b"dinf", _full_box(b"dref", 0, 0, b"\x00\x00\x00\x01" + _full_box(b"url ", 0, 1, b"")))


class _Item:
    __slots__ = (
        "content_type",
        "data_ref",
        "extents",
        "flags",
        "id",
        "method",
        "protected",
        "type",
    )

    def __init__(self, item_id: int) -> None:
        self.id = item_id
        self.type = b""  # empty for infe versions 0 and 1, which have none
        self.flags = 0
        self.protected = False
        self.content_type = b""
        self.method = -1  # no iloc entry
        self.data_ref = 0
        self.extents: list[tuple[int, int]] = []  # (offset, length) in the file or in idat


class _Reader:
    """Big-endian fields from data[pos:end]; running past `end` is a corrupt file."""

    __slots__ = ("data", "end", "pos", "what")

    def __init__(self, data: bytes, pos: int, end: int, what: str) -> None:
        self.data, self.pos, self.end, self.what = data, pos, end, what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise Rejected(f"corrupt HEIF: truncated {self.what}")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big") if n else 0

    def cstring(self) -> bytes:
        """A NUL-terminated string; one cut short by the box end is read to the end."""
        nul = self.data.find(b"\x00", self.pos, self.end)
        stop = self.end if nul < 0 else nul
        text = self.data[self.pos : stop]
        self.pos = min(self.end, stop + 1)
        return text


def _boxes(
    data: bytes, start: int, end: int, what: str, *, top: bool = False, limit: int = _MAX_BOXES
) -> Iterator[tuple[bytes, int, int]]:
    """(type, body start, box end) of the boxes in data[start:end]."""
    pos = start
    count = 0
    while pos < end:
        count += 1
        if count > limit:
            raise Rejected(f"corrupt HEIF: too many boxes in {what}")
        if end - pos < 8:
            raise Rejected(f"corrupt HEIF: truncated box in {what}")
        size, btype = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if end - pos < 16:
                raise Rejected(f"corrupt HEIF: truncated box in {what}")
            size = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        elif size == 0:
            # "to the end of the file": allowed for the last top-level box only.
            if not top:
                raise Rejected(f"corrupt HEIF: box of unstated size in {what}")
            size = end - pos
        if btype == b"uuid":
            header += 16
        if size < header or pos + size > end:
            raise Rejected(f"corrupt HEIF: box size out of bounds in {what}")
        yield btype, pos + header, pos + size
        pos += size


def _version(data: bytes, body: int, end: int, what: str, known: int) -> tuple[int, int]:
    """(version, flags) of a full box; a version above `known` is one we cannot read."""
    if end - body < 4:
        raise Rejected(f"corrupt HEIF: truncated {what}")
    word = struct.unpack_from(">I", data, body)[0]
    if word >> 24 > known:
        raise HeifUnsupported(VERSION)
    return word >> 24, word & 0xFFFFFF


class _Meta:
    """What the meta box says, read once."""

    __slots__ = ("associations", "idat", "items", "order", "primary", "properties", "refs")

    def __init__(self) -> None:
        self.primary = -1
        self.items: dict[int, _Item] = {}
        self.order: list[int] = []  # item ids in iinf order
        self.refs: list[tuple[bytes, int, list[int]]] = []  # (type, from, to)
        self.properties: list[tuple[bytes, bytes]] = []  # (type, body), index 1 is the first
        self.associations: dict[int, list[tuple[int, bool]]] = {}  # item -> (index, essential)
        self.idat: tuple[int, int] | None = None  # body range in the file


def _read_infe(data: bytes, body: int, end: int, meta: _Meta) -> None:
    version, flags = _version(data, body, end, "item info entry", 3)
    r = _Reader(data, body + 4, end, "item info entry")
    item = _Item(r.uint(4 if version == 3 else 2))
    item.protected = r.uint(2) != 0
    item.flags = flags & 1  # hidden
    if version >= 2:
        item.type = r.take(4)
        r.cstring()  # name: not kept
        if item.type == b"mime":
            item.content_type = r.cstring()
    if item.id in meta.items:
        raise Rejected("corrupt HEIF: item described twice")
    meta.items[item.id] = item
    meta.order.append(item.id)


def _read_iinf(data: bytes, body: int, end: int, meta: _Meta, max_items: int) -> None:
    version, _ = _version(data, body, end, "item info", 1)
    r = _Reader(data, body + 4, end, "item info")
    if r.uint(4 if version else 2) > max_items:
        raise Rejected(f"corrupt HEIF: more than {max_items} items")
    for btype, start, stop in _boxes(data, r.pos, end, "item info", limit=max_items):
        if btype == b"infe":
            _read_infe(data, start, stop, meta)


def _read_iloc(data: bytes, body: int, end: int, meta: _Meta, max_items: int) -> None:
    version, _ = _version(data, body, end, "item locations", 2)
    r = _Reader(data, body + 4, end, "item locations")
    sizes = r.uint(2)
    offset_size, length_size = sizes >> 12, (sizes >> 8) & 15
    base_size, index_size = (sizes >> 4) & 15, (sizes & 15 if version else 0)
    if any(s not in (0, 4, 8) for s in (offset_size, length_size, base_size, index_size)):
        raise Rejected("corrupt HEIF: bad field size in item locations")
    count = r.uint(4 if version == 2 else 2)
    if count > max_items:
        raise Rejected(f"corrupt HEIF: more than {max_items} items")
    seen: set[int] = set()
    for _ in range(count):
        item_id = r.uint(4 if version == 2 else 2)
        method = r.uint(2) & 15 if version else 0
        data_ref = r.uint(2)
        base = r.uint(base_size)
        extent_count = r.uint(2)
        if extent_count > _MAX_EXTENTS:
            raise Rejected("corrupt HEIF: too many extents")
        extents = []
        for _ in range(extent_count):
            r.uint(index_size)  # used by construction method 2 only, which we do not keep
            extents.append((base + r.uint(offset_size), r.uint(length_size)))
        if item_id in seen:
            raise Rejected("corrupt HEIF: item located twice")
        seen.add(item_id)
        item = meta.items.get(item_id)
        if item is not None:
            item.method, item.data_ref, item.extents = method, data_ref, extents


def _read_iref(data: bytes, body: int, end: int, meta: _Meta, max_items: int) -> None:
    version, _ = _version(data, body, end, "item references", 1)
    id_size = 4 if version else 2
    total = 0
    for btype, start, stop in _boxes(data, body + 4, end, "item references"):
        r = _Reader(data, start, stop, "item reference")
        source = r.uint(id_size)
        count = r.uint(2)
        total += count + 1  # a box naming no item costs a step too
        if total > 16 * max_items:
            raise Rejected("corrupt HEIF: too many item references")
        meta.refs.append((btype, source, [r.uint(id_size) for _ in range(count)]))


def _read_iprp(data: bytes, body: int, end: int, meta: _Meta, max_items: int) -> None:
    seen_ipco = False
    for btype, start, stop in _boxes(data, body, end, "item properties"):
        if btype == b"ipco":
            if seen_ipco:
                raise Rejected("corrupt HEIF: two property containers")
            seen_ipco = True
            for ptype, pstart, pstop in _boxes(
                data, start, stop, "property container", limit=_MAX_PROPERTIES
            ):
                meta.properties.append((ptype, data[pstart:pstop]))
        elif btype == b"ipma":
            version, flags = _version(data, start, stop, "property associations", 1)
            r = _Reader(data, start + 4, stop, "property associations")
            count = r.uint(4)
            if count > max_items:
                raise Rejected(f"corrupt HEIF: more than {max_items} items")
            for _ in range(count):
                item_id = r.uint(4 if version else 2)
                if item_id in meta.associations:
                    raise Rejected("corrupt HEIF: item associated twice")
                links = []
                for _ in range(r.uint(1)):
                    if flags & 1:
                        value = r.uint(2)
                        links.append((value & 0x7FFF, bool(value & 0x8000)))
                    else:
                        value = r.uint(1)
                        links.append((value & 0x7F, bool(value & 0x80)))
                meta.associations[item_id] = links


def _read_meta(data: bytes, body: int, end: int, max_items: int, removed: list[str]) -> _Meta:
    """The meta box; boxes in it we do not rebuild are reported."""
    _version(data, body, end, "meta", 0)
    meta = _Meta()
    seen: set[bytes] = set()
    extra = False
    iloc = (0, 0)
    for btype, start, stop in _boxes(data, body + 4, end, "meta"):
        if btype in seen and btype in _ONCE:
            raise Rejected("corrupt HEIF: a meta box repeated")
        seen.add(btype)
        if btype == b"hdlr":
            if stop - start < 12 or data[start + 8 : start + 12] != b"pict":
                raise HeifUnsupported(HANDLER)
        elif btype == b"pitm":
            version, _ = _version(data, start, stop, "primary item", 1)
            meta.primary = _Reader(data, start + 4, stop, "primary item").uint(4 if version else 2)
        elif btype == b"iinf":
            _read_iinf(data, start, stop, meta, max_items)
        elif btype == b"iloc":
            iloc = (start, stop)
        elif btype == b"iref":
            _read_iref(data, start, stop, meta, max_items)
        elif btype == b"iprp":
            _read_iprp(data, start, stop, meta, max_items)
        elif btype == b"idat":
            meta.idat = (start, stop)
        elif btype != b"dinf" or data[start - 8 : stop] != _DINF:
            extra = True  # a data reference other than "this file" names a place: reported
    if b"hdlr" not in seen:
        raise Rejected("corrupt HEIF: meta without a handler")
    if b"iloc" in seen:  # after iinf, wherever it stands: locations attach to known items
        _read_iloc(data, iloc[0], iloc[1], meta, max_items)
    if extra:
        note_removed(removed, "heif.metadata")
    return meta


def _check_extents(item: _Item, data: bytes, meta: _Meta) -> None:
    """Make extents absolute and in bounds; a zero length means "to the end" (spec)."""
    if item.method not in (0, 1) or item.data_ref != 0:
        return
    if item.method == 1:
        if meta.idat is None:
            raise Rejected("corrupt HEIF: item data in a missing idat")
        size = meta.idat[1] - meta.idat[0]
    else:
        size = len(data)
    fixed = []
    for offset, length in item.extents:
        if length == 0 and len(item.extents) == 1:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise Rejected("corrupt HEIF: item data outside the file")
        fixed.append((offset, length))
    item.extents = fixed


def _refuse_non_picture_units(meta: _Meta, item: _Item, data: bytes) -> None:
    """HeifUnsupported if an HEVC item's coded data holds a unit that is not picture data (an
    SEI's user data, filler, a reserved type: any bytes at all; the hvcC's own SEI arrays are
    dropped in _hvcc). Phones and libheif write none there; a file that does is re-encoded
    rather than copied with it."""
    if item.type != b"hvc1":
        return
    length_size = 4
    for index, _ in meta.associations.get(item.id, []):
        if 0 < index <= len(meta.properties):
            ptype, body = meta.properties[index - 1]
            if ptype == b"hvcC" and len(body) > 21:
                length_size = (body[21] & 3) + 1
    coded = _item_bytes(item, data, meta) or b""
    pos = 0
    while pos < len(coded):
        if pos + length_size >= len(coded):
            raise Rejected("corrupt HEIF: truncated coded unit")
        size = int.from_bytes(coded[pos : pos + length_size], "big")
        if size == 0 or (coded[pos + length_size] >> 1) & 0x3F not in _HEVC_PICTURE_UNITS:
            raise HeifUnsupported(SEI)
        pos += length_size + size
    if pos != len(coded):
        raise Rejected("corrupt HEIF: coded unit beyond its item")


def _refuse_shared_bytes(meta: _Meta, kept: dict[int, None], mdat: list[tuple[int, int]]) -> None:
    """Rejected unless every kept item's data in the file lies inside an mdat payload and
    shares no byte with an item that goes: an extent stretched over the Exif item, or into
    the meta box (item names, text properties), would copy them into the output."""
    dropped = [
        (o, o + n)
        for i, item in meta.items.items()
        if i not in kept and item.method == 0 and item.data_ref == 0
        for o, n in item.extents
    ]
    for item_id in kept:
        item = meta.items[item_id]
        if item.method != 0:
            continue  # idat: inside the meta box by construction, checked against its range
        for offset, length in item.extents:
            start, end = offset, offset + length
            if not any(lo <= start and end <= hi for lo, hi in mdat):
                raise Rejected("corrupt HEIF: image data outside the media data")
            if any(start < hi and lo < end for lo, hi in dropped):
                raise Rejected("corrupt HEIF: image data overlaps another item")


def _item_bytes(item: _Item, data: bytes, meta: _Meta) -> bytes | None:
    if item.method not in (0, 1) or item.data_ref != 0:
        return None
    base = meta.idat[0] if item.method == 1 and meta.idat else 0
    return b"".join(data[base + o : base + o + n] for o, n in item.extents)


def _auxiliary_urn(meta: _Meta, item_id: int) -> bytes | None:
    for index, _ in meta.associations.get(item_id, []):
        if 0 < index <= len(meta.properties):
            ptype, body = meta.properties[index - 1]
            if ptype == b"auxC" and len(body) >= 4:
                return _Reader(body, 4, len(body), "auxC").cstring()
    return None


def _derived_body(item: _Item, raw: bytes, inputs: int) -> None:
    """A grid or overlay's data is a fixed structure: any other length could hide text."""
    if item.type == b"iden":
        if inputs != 1 or raw:
            raise Rejected("corrupt HEIF: bad identity derivation")
        return
    if len(raw) < 2 or raw[0] != 0:
        raise Rejected("corrupt HEIF: bad derived image data")
    field = 4 if raw[1] & 1 else 2
    if item.type == b"grid":
        if len(raw) != 4 + 2 * field or (raw[2] + 1) * (raw[3] + 1) != inputs:
            raise Rejected("corrupt HEIF: bad grid")
    elif len(raw) != 10 + 2 * field + 2 * field * inputs:
        raise Rejected("corrupt HEIF: bad overlay")


def _keep_image(meta: _Meta, item_id: int, data: bytes, kept: dict[int, None]) -> None:
    """Keep a coded image, or a derived one and its inputs (`kept`: an ordered set)."""
    item = meta.items.get(item_id)
    if item is None:
        raise Rejected("corrupt HEIF: reference to a missing item")
    if item.protected:
        raise HeifUnsupported(PROTECTED)
    if item.type in _DERIVED:
        inputs = [to for t, src, tos in meta.refs if t == b"dimg" and src == item_id for to in tos]
        if not inputs:
            raise Rejected("corrupt HEIF: derived image without inputs")
        raw = _item_bytes(item, data, meta) if item.method >= 0 else b""
        if raw is None:
            raise HeifUnsupported(EXTERNAL if item.data_ref else ITEM_REFERENCE)
        _derived_body(item, raw, len(inputs))
        kept[item_id] = None
        for to in inputs:
            tile = meta.items.get(to)
            if tile is None:
                raise Rejected("corrupt HEIF: reference to a missing item")
            if tile.type not in _CODED:
                raise HeifUnsupported(NESTED if tile.type in _DERIVED else PRIMARY_TYPE)
            _keep_coded(tile)
            kept[to] = None
    elif item.type in _CODED:
        _keep_coded(item)
        kept[item_id] = None
    else:
        raise HeifUnsupported(PRIMARY_TYPE)


def _keep_coded(item: _Item) -> None:
    if item.protected:
        raise HeifUnsupported(PROTECTED)
    if item.method < 0 or not item.extents:
        raise Rejected("corrupt HEIF: image item without data")
    if item.data_ref:
        raise HeifUnsupported(EXTERNAL)
    if item.method == 2:
        raise HeifUnsupported(ITEM_REFERENCE)


def _hvcc(body: bytes, removed: list[str]) -> bytes:
    """hvcC with its parameter set arrays only (SEI arrays dropped: they can carry user text)."""
    r = _Reader(body, 0, len(body), "hvcC")
    head = r.take(22)
    arrays = []
    for _ in range(r.uint(1)):
        start = r.pos
        nal_type = r.uint(1) & 0x3F
        for _ in range(r.uint(2)):
            r.take(r.uint(2))
        if nal_type in _HEVC_PARAMETER_SETS:
            arrays.append(body[start : r.pos])
        else:
            note_removed(removed, "heif.metadata")
    if r.pos != len(body):
        note_removed(removed, "heif.metadata")
    return head + bytes([len(arrays)]) + b"".join(arrays)


def _property_size(ptype: bytes, body: bytes) -> int | None:
    """The size a property's fields take, or None if it is rebuilt field by field."""
    if ptype in _FIXED_SIZES:
        return _FIXED_SIZES[ptype]
    if ptype == b"pixi":
        return 5 + body[4] if len(body) >= 5 else 5
    if ptype == b"a1lx":
        return 1 + 3 * (4 if body[:1] and body[0] & 1 else 2)
    if ptype == b"cclv" and body:
        flags = body[0]
        return 1 + 24 * bool(flags & 0x20) + 4 * sum(bool(flags & b) for b in (0x10, 0x08, 0x04))
    return None


def _clean_property(ptype: bytes, body: bytes, removed: list[str]) -> bytes | None:
    """The property's body as the output carries it, or None to drop it."""
    size = _property_size(ptype, body)
    if size is not None:
        if len(body) < size:
            raise Rejected("corrupt HEIF: truncated item property")
        if len(body) > size:
            note_removed(removed, "heif.metadata")
        return body[:size]
    if ptype == b"hvcC":
        return _hvcc(body, removed)
    if ptype == b"av1C":
        if len(body) < 4:
            raise Rejected("corrupt HEIF: truncated item property")
        return body  # config OBUs are sequence headers: needed to decode
    if ptype == b"auxC":
        r = _Reader(body, 0, len(body), "auxC")
        head = r.take(4)
        urn = r.cstring()
        subtype = body[r.pos :]
        if len(subtype) > _MAX_AUX_SUBTYPE:
            note_removed(removed, "heif.metadata")
            subtype = b""
        return head + urn + b"\x00" + subtype
    if ptype == b"colr":
        kind = body[:4]
        if kind == b"nclx":
            if len(body) < 11:
                raise Rejected("corrupt HEIF: truncated item property")
            if len(body) > 11:
                note_removed(removed, "heif.metadata")
            return body[:11]
        if kind in (b"prof", b"rICC"):
            try:
                cleaned, changed = clean_icc(body[4:])
            except ValueError:
                note_removed(removed, "icc.unreadable")
                return None
            if changed:
                note_removed(removed, "icc.free_text")
            return kind + cleaned
        note_removed(removed, "heif.metadata")
        return None
    raise AssertionError("property not on the whitelist")  # pragma: no cover


class _Roles:
    """Who points at what, looked up once: a dropped item's name depends on its references."""

    __slots__ = ("alpha", "auxiliary", "parents", "thumbnails")

    def __init__(self, meta: _Meta) -> None:
        self.thumbnails = {s for t, s, _ in meta.refs if t == b"thmb"}
        self.auxiliary = {s for t, s, _ in meta.refs if t == b"auxl"}
        self.alpha = {s for s in self.auxiliary if _auxiliary_urn(meta, s) in _ALPHA_URNS}
        self.parents: dict[int, list[int]] = {}
        for ref_type, source, targets in meta.refs:
            if ref_type == b"dimg":
                for target in targets:
                    self.parents.setdefault(target, []).append(source)


def _classify(item: _Item, roles: _Roles) -> str:
    """The name a dropped item is reported under."""
    if item.type == b"Exif":
        return "exif"
    if item.type == b"mime":
        ctype = item.content_type.split(b";", 1)[0].strip().lower()
        return "xmp" if ctype == b"application/rdf+xml" else "heif.metadata"
    if item.type not in _IMAGE_TYPES:
        return "heif.metadata"
    # Tiles of a dropped derived image share its fate (a thumbnail's tiles are thumbnail).
    for source in (item.id, *roles.parents.get(item.id, [])):
        if source in roles.thumbnails:
            return "heif.thumbnail"
        if source in roles.auxiliary:
            # An alpha plane of an image that goes is one more extra image.
            return "heif.extra_images" if source in roles.alpha else "heif.depth"
    return "heif.extra_images"


def _report_exif(item: _Item, data: bytes, meta: _Meta, result: ContainerScrub) -> None:
    raw = _item_bytes(item, data, meta)
    blob = b""
    if raw is not None and len(raw) >= 4:
        # An Exif item starts with the offset of the TIFF header after these four bytes.
        start = 4 + struct.unpack(">I", raw[:4])[0]
        blob = raw[start:] if start < len(raw) else b""
        if blob.startswith(b"Exif\x00\x00"):
            blob = blob[6:]
    try:
        got = exif_mod.read_exif(blob)
    except (ValueError, struct.error):
        note_removed(result.removed, "exif.unreadable")
        return
    if result.captured_at is None:
        result.captured_at = got.captured_at
    for category in sorted(got.categories):
        note_removed(result.removed, category)


def _size(meta: _Meta, item_id: int, new_index: dict[int, int]) -> tuple[int, int]:
    """An image item's coded size (ispe: mandatory for every image item)."""
    for index, _ in meta.associations.get(item_id, []):
        ptype, body = meta.properties[index - 1] if index in new_index else (b"", b"")
        if ptype == b"ispe":
            width, height = struct.unpack_from(">II", body, 4)
            return width, height
    raise Rejected("corrupt HEIF: image without a size")


def _quarter_turns(meta: _Meta, item_id: int, new_index: dict[int, int]) -> int:
    for index, _ in meta.associations.get(item_id, []):
        ptype, body = meta.properties[index - 1] if index in new_index else (b"", b"")
        if ptype == b"irot":
            return body[0] & 3
    return 0


def _iloc(entries: list[tuple[int, int, list[tuple[int, int]]]], wide: bool, big: bool) -> bytes:
    """An iloc of (item, construction method, [(offset, length)]) with no base offsets."""
    version = 2 if wide else 1
    field = 8 if big else 4
    out = [struct.pack(">BB", (field << 4) | field, 0)]
    out.append(struct.pack(">I" if wide else ">H", len(entries)))
    for item_id, method, extents in entries:
        out.append(struct.pack(">I" if wide else ">H", item_id))
        out.append(struct.pack(">HHH", method, 0, len(extents)))
        for offset, length in extents:
            out.append(struct.pack(">QQ" if big else ">II", offset, length))
    return _full_box(b"iloc", version, 0, b"".join(out))


def _ftyp(data: bytes, body: int, end: int) -> bytes:
    if end - body < 8 or (end - body) % 4:
        raise Rejected("corrupt HEIF: bad file type box")
    brands = [data[p : p + 4] for p in range(body + 8, end, 4)]
    if len(brands) > _MAX_BRANDS:
        raise Rejected("corrupt HEIF: bad file type box")
    # 'tmap' promises a gain map, which is never kept.
    kept = [b for b in brands if b != b"tmap"]
    return _box(b"ftyp", data[body : body + 8] + b"".join(kept))


def scrub_heif(data: bytes, *, max_pixels: int, max_items: int = 1000) -> ContainerScrub:
    """The HEIF rebuilt with the primary image (its tiles and alpha) only, coded bytes copied.

    Raises Rejected for a corrupt or over-limit file, HeifUnsupported for one to re-encode.
    """
    try:
        return _scrub(data, max_pixels, max_items)
    except (IndexError, struct.error, ValueError, OverflowError):
        # Every read is checked; this is the net under that, so no parser error escapes.
        raise Rejected("corrupt HEIF: malformed structure") from None


def _scrub(data: bytes, max_pixels: int, max_items: int) -> ContainerScrub:
    result = ContainerScrub(b"")
    removed = result.removed
    if len(data) < 16 or data[4:8] != b"ftyp":
        raise Rejected("not a HEIF stream")
    ftyp = b""
    meta_range: tuple[int, int] | None = None
    mdat_ranges: list[tuple[int, int]] = []  # payloads
    for btype, start, stop in _boxes(data, 0, len(data), "file", top=True):
        if btype == b"ftyp":
            if ftyp:
                raise Rejected("corrupt HEIF: two file type boxes")
            ftyp = _ftyp(data, start, stop)
        elif btype == b"meta":
            if meta_range is not None:
                raise Rejected("corrupt HEIF: two meta boxes")
            meta_range = (start, stop)
        elif btype == b"moov":
            raise HeifUnsupported(SEQUENCE)
        elif btype == b"mdat":
            mdat_ranges.append((start, stop))
        elif btype not in _PADDING:
            note_removed(removed, "heif.metadata")
    if meta_range is None:
        raise Rejected("corrupt HEIF: no meta box")
    meta = _read_meta(data, meta_range[0], meta_range[1], max_items, removed)
    if meta.primary not in meta.items:
        raise Rejected("corrupt HEIF: no primary item")
    for item in meta.items.values():
        _check_extents(item, data, meta)

    kept: dict[int, None] = {}
    _keep_image(meta, meta.primary, data, kept)
    for ref_type, source, targets in meta.refs:
        if ref_type != b"auxl" or meta.primary not in targets or source in kept:
            continue
        if source in meta.items and _auxiliary_urn(meta, source) in _ALPHA_URNS:
            _keep_image(meta, source, data, kept)

    # Report what goes: Exif first (it gives the capture time), then the rest in file order.
    describes_primary = {s for t, s, tos in meta.refs if t == b"cdsc" and meta.primary in tos}
    exif_items = [meta.items[i] for i in meta.order if meta.items[i].type == b"Exif"]
    exif_items.sort(key=lambda it: it.id not in describes_primary)
    for item in exif_items:
        note_removed(removed, "exif")
        _report_exif(item, data, meta, result)
    roles = _Roles(meta)
    for item_id in meta.order:
        if item_id not in kept:
            note_removed(removed, _classify(meta.items[item_id], roles))

    _refuse_shared_bytes(meta, kept, mdat_ranges)
    for item_id in kept:
        _refuse_non_picture_units(meta, meta.items[item_id], data)

    # Properties: the whitelisted ones the kept items use, renumbered in their original order.
    if len(meta.properties) > _MAX_PROPERTIES:
        raise Rejected("corrupt HEIF: too many item properties")
    for ptype, _ in meta.properties:
        if ptype not in _PROPERTIES:
            note_removed(removed, "heif.metadata")
    used: set[int] = set()
    for item_id in kept:
        for index, essential in meta.associations.get(item_id, []):
            if index == 0:
                continue
            if index > len(meta.properties):
                raise Rejected("corrupt HEIF: association to a missing property")
            if meta.properties[index - 1][0] in _PROPERTIES:
                used.add(index)
            elif essential:
                raise HeifUnsupported(ESSENTIAL)
    new_index: dict[int, int] = {}
    properties: list[bytes] = []
    for index in sorted(used):
        ptype, body = meta.properties[index - 1]
        cleaned = _clean_property(ptype, body, removed)
        if cleaned is not None:
            properties.append(_box(ptype, cleaned))
            new_index[index] = len(properties)

    coded_area = 0
    for item_id in kept:
        width, height = _size(meta, item_id, new_index)
        if width * height > max_pixels:
            raise Rejected("image exceeds the pixel limit")
        if meta.items[item_id].type in _CODED:
            coded_area += width * height
        if item_id == meta.primary:
            result.width, result.height = width, height
            if _quarter_turns(meta, item_id, new_index) % 2:
                result.width, result.height = height, width
    # Tiles pad the image to whole tiles, alpha adds a plane: a real file stays well within
    # four times its size, and 1000 tiles each at the limit would hold a decoder for minutes.
    if coded_area > 4 * max_pixels:
        raise Rejected("image exceeds the pixel limit")

    result.output = _build(data, ftyp, meta, kept, new_index, properties)
    return result


def _build(
    data: bytes,
    ftyp: bytes,
    meta: _Meta,
    kept: dict[int, None],
    new_index: dict[int, int],
    properties: list[bytes],
) -> bytes:
    ordered = [i for i in meta.order if i in kept]
    wide = max(ordered) > 0xFFFF
    id_format = ">I" if wide else ">H"

    infe = b"".join(
        _full_box(
            b"infe",
            3 if wide else 2,
            meta.items[i].flags,
            struct.pack(id_format, i) + b"\x00\x00" + meta.items[i].type + b"\x00",
        )
        for i in ordered
    )
    iinf = _full_box(b"iinf", int(wide), 0, struct.pack(id_format, len(ordered)) + infe)
    refs = []
    for ref_type, source, targets in meta.refs:
        # An alpha plane may name other images too; those went. (A kept grid's tiles all stay.)
        to_kept = [to for to in targets if to in kept]
        if ref_type in _KEPT_REFERENCES and source in kept and to_kept:
            ids = struct.pack(id_format, source) + struct.pack(">H", len(to_kept))
            ids += b"".join(struct.pack(id_format, to) for to in to_kept)
            refs.append(_box(ref_type, ids))
    iref = _full_box(b"iref", int(wide), 0, b"".join(refs)) if refs else b""

    large_index = len(properties) > 0x7F
    ipma_entries = []
    for i in ordered:
        links = [(new_index[n], ess) for n, ess in meta.associations.get(i, []) if n in new_index]
        if not links:
            continue
        packed = b"".join(
            struct.pack(">H", n | (0x8000 if ess else 0))
            if large_index
            else struct.pack(">B", n | (0x80 if ess else 0))
            for n, ess in links
        )
        ipma_entries.append(struct.pack(id_format, i) + struct.pack(">B", len(links)) + packed)
    ipma = _full_box(
        b"ipma",
        int(wide),
        int(large_index),
        struct.pack(">I", len(ipma_entries)) + b"".join(ipma_entries),
    )
    iprp = _box(b"iprp", _box(b"ipco", b"".join(properties)) + ipma)

    # Item data: idat extents into a new idat, file extents into one mdat, each copied once.
    idat_parts: list[bytes] = []
    mdat_parts: list[bytes] = []
    placed: dict[tuple[int, int, int], int] = {}
    sizes = [0, 0]
    plan: list[tuple[int, int, list[tuple[int, int]]]] = []
    for i in ordered:
        item = meta.items[i]
        if item.method < 0:
            continue
        parts = idat_parts if item.method == 1 else mdat_parts
        base = meta.idat[0] if item.method == 1 and meta.idat else 0
        extents = []
        for offset, length in item.extents:
            key = (item.method, offset, length)
            if key not in placed:
                placed[key] = sizes[item.method]
                parts.append(data[base + offset : base + offset + length])
                sizes[item.method] += length
            extents.append((placed[key], length))
        plan.append((i, item.method, extents))
    if sizes[0] + sizes[1] > len(data):
        raise Rejected("corrupt HEIF: item data overlaps")  # only a crafted file shares bytes

    hdlr = _full_box(b"hdlr", 0, 0, b"\x00" * 4 + b"pict" + b"\x00" * 12 + b"\x00")
    pitm = _full_box(b"pitm", int(wide), 0, struct.pack(id_format, meta.primary))
    idat = _box(b"idat", b"".join(idat_parts)) if idat_parts else b""
    head = hdlr + _DINF + pitm + iinf + iref + iprp + idat
    # The iloc's size does not depend on the offsets in it: build it once to learn where the
    # mdat payload starts, then again with the real offsets (64-bit only if 32 do not reach).
    mdat_payload = sizes[0]
    for big in (False, True):
        mdat_header = 16 if big else 8
        payload_at = len(ftyp) + 12 + len(head) + len(_iloc(plan, wide, big)) + mdat_header
        if payload_at + mdat_payload <= 0xFFFFFFFF:
            break
    located = [
        (i, method, [(o + payload_at if method == 0 else o, n) for o, n in extents])
        for i, method, extents in plan
    ]
    meta_box = _full_box(b"meta", 0, 0, head + _iloc(located, wide, big))
    if big:
        mdat = struct.pack(">I4sQ", 1, b"mdat", 16 + mdat_payload)
    else:
        mdat = struct.pack(">I4s", 8 + mdat_payload, b"mdat")
    return b"".join([ftyp, meta_box, mdat, *mdat_parts])
