"""Generated test images carrying every leak vector, each with its own canary string."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import piexif
from PIL import Image


def canary(name: str) -> str:
    return f"CANARY{name.upper()}XQZ"


def photo(w: int = 320, h: int = 240, seed: int = 1) -> Image.Image:
    """A noisy, asymmetric RGB picture (top-left quadrant red) so orientation errors show."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    a[: h // 2, : w // 2] = (220, 20, 20)
    return Image.fromarray(a)


def icc_with_text(desc: str, cprt: str, extra: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """A minimal v2 ICC profile whose description and copyright carry the given text, with
    `extra` tags (signature, data) after them."""

    def desc_tag(text: str) -> bytes:
        raw = text.encode()
        return (
            b"desc\x00\x00\x00\x00" + struct.pack(">I", len(raw) + 1) + raw + b"\x00" + b"\x00" * 78
        )

    wtpt = b"XYZ \x00\x00\x00\x00" + struct.pack(">iii", 63190, 65536, 54061)
    tags = [
        (b"desc", desc_tag(desc)),
        (b"cprt", icc_text(cprt)),
        (b"wtpt", wtpt),
        (b"dmnd", icc_text(desc)),
        *(extra or []),
    ]
    table, blob = b"", b""
    base = 132 + 12 * len(tags)
    for sig, data in tags:
        while (base + len(blob)) % 4:
            blob += b"\x00"
        table += struct.pack(">4sII", sig, base + len(blob), len(data))
        blob += data
    size = base + len(blob)
    header = struct.pack(">I4sI4s4s4s", size, b"none", 0x02100000, b"mntr", b"RGB ", b"XYZ ")
    header += (
        b"\x00" * 12 + b"acsp" + b"APPL" + b"\x00" * 4 + b"\x00" * 8 + b"\x00" * 8 + b"\x00" * 4
    )
    header += struct.pack(">iii", 63190, 65536, 54061) + b"\x00" * 4
    header = header.ljust(128, b"\x00")
    return header + struct.pack(">I", len(tags)) + table + blob


def icc_text(text: str) -> bytes:
    """An ICC textType tag."""
    return b"text\x00\x00\x00\x00" + text.encode() + b"\x00"


def full_exif(orientation: int = 1, with_thumbnail: bool = True) -> bytes:
    thumb = io.BytesIO()
    t = photo(64, 48, seed=9)
    t.save(thumb, "JPEG", comment=canary("thumbcomment").encode())
    exif = {
        "0th": {
            piexif.ImageIFD.Make: b"ClinCam",
            piexif.ImageIFD.Model: canary("model").encode(),
            piexif.ImageIFD.Artist: canary("artist").encode(),
            piexif.ImageIFD.Copyright: canary("copyright").encode(),
            piexif.ImageIFD.ImageDescription: canary("description").encode(),
            piexif.ImageIFD.Orientation: orientation,
            piexif.ImageIFD.DateTime: b"2024:05:06 07:08:09",
            piexif.ImageIFD.XPComment: canary("xpcomment").encode("utf-16-le"),
        },
        "Exif": {
            piexif.ExifIFD.DateTimeOriginal: b"2024:05:06 07:08:09",
            piexif.ExifIFD.OffsetTimeOriginal: b"+02:00",
            piexif.ExifIFD.BodySerialNumber: canary("serial").encode(),
            piexif.ExifIFD.CameraOwnerName: canary("owner").encode(),
            piexif.ExifIFD.UserComment: b"ASCII\x00\x00\x00" + canary("usercomment").encode(),
            piexif.ExifIFD.MakerNote: canary("makernote").encode(),
        },
        "GPS": {
            piexif.GPSIFD.GPSLatitudeRef: b"N",
            piexif.GPSIFD.GPSLatitude: ((52, 1), (31, 1), (1234, 100)),
            piexif.GPSIFD.GPSProcessingMethod: b"ASCII\x00\x00\x00" + canary("gpsmethod").encode(),
        },
        "1st": {piexif.ImageIFD.Compression: 6} if with_thumbnail else {},
        "thumbnail": thumb.getvalue() if with_thumbnail else None,
    }
    return piexif.dump(exif)


def _seg(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


JPEG_VECTORS = (
    "exif",
    "xmp",
    "xmpext",
    "iptc",
    "com",
    "jumbf",
    "app15",
    "ducky",
    "mpf",
    "trailer",
    "icc",
    "thumbcomment",
    "model",
    "artist",
    "copyright",
    "description",
    "xpcomment",
    "serial",
    "owner",
    "usercomment",
    "makernote",
    "gpsmethod",
    "jfifthumb",
)


def leaky_jpeg(
    orientation: int = 1,
    size: tuple[int, int] = (320, 240),
    progressive: bool = False,
    cmyk: bool = False,
    icc_profile: bytes | None = None,
) -> bytes:
    """A JPEG with every metadata leak vector the issue lists."""
    im = photo(*size)
    if cmyk:
        im = im.convert("CMYK")
    buf = io.BytesIO()
    im.save(
        buf,
        "JPEG",
        quality=90,
        progressive=progressive,
        icc_profile=icc_profile or icc_with_text(canary("icc"), canary("icc") + " copyright"),
    )
    data = buf.getvalue()
    extras = b"".join(
        [
            _seg(0xE1, full_exif(orientation)),
            _seg(
                0xE1,
                b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta><dc:creator>"
                + canary("xmp").encode()
                + b"</dc:creator></x:xmpmeta>",
            ),
            _seg(
                0xE1,
                b"http://ns.adobe.com/xmp/extension/\x00"
                + b"0" * 32
                + b"\x00\x00\x01\x00\x00\x00\x00\x00"
                + canary("xmpext").encode(),
            ),
            _seg(
                0xED,
                b"Photoshop 3.0\x008BIM\x04\x04\x00\x00\x00\x00\x00\x20\x1c\x02\x50\x00\x1a"
                + canary("iptc").encode(),
            ),
            _seg(0xFE, canary("com").encode()),
            _seg(0xFE, canary("com").encode("utf-16-le")),
            _seg(0xEB, b"JP\x00\x00" + canary("jumbf").encode()),
            _seg(0xEF, canary("app15").encode()),
            _seg(0xEC, b"Ducky\x00\x01\x00\x00\x00\x30" + canary("ducky").encode()),
            _seg(0xE2, b"MPF\x00MM\x00*\x00\x00\x00\x08" + canary("mpf").encode()),
            _seg(0xE0, b"JFXX\x00\x10" + canary("jfifthumb").encode()),
        ]
    )
    # after SOI and Pillow's JFIF APP0
    jfif_end = 4 + struct.unpack(">H", data[4:6])[0] if data[2:4] == b"\xff\xe0" else 2
    secondary = io.BytesIO()
    photo(80, 60, seed=3).save(secondary, "JPEG", comment=canary("mpf").encode())
    trailer = b"SEFH" + canary("trailer").encode() + canary("trailer").encode("utf-16-be")
    return data[:jfif_end] + extras + data[jfif_end:] + secondary.getvalue() + trailer


def _chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


PNG_VECTORS = ("text", "ztxt", "itxt", "exif", "unknown", "icc", "trailer")


def leaky_png() -> bytes:
    buf = io.BytesIO()
    photo().save(buf, "PNG", icc_profile=icc_with_text(canary("icc"), "c"))
    data = buf.getvalue()
    iend = data.rindex(b"IEND") - 4
    extra = b"".join(
        [
            _chunk(b"tEXt", b"Author\x00" + canary("text").encode()),
            _chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(canary("ztxt").encode())),
            _chunk(
                b"iTXt",
                b"Description\x00\x01\x00en\x00\x00"
                + zlib.compress(canary("itxt").encode("utf-8")),
            ),
            _chunk(b"eXIf", full_exif(1, with_thumbnail=False)[6:]),
            _chunk(b"tIME", struct.pack(">HBBBBB", 2024, 5, 6, 7, 8, 9)),
            _chunk(b"clNv", canary("unknown").encode()),
        ]
    )
    return data[:iend] + extra + data[iend:] + canary("trailer").encode()


def leaky_webp() -> bytes:
    buf = io.BytesIO()
    photo().save(
        buf,
        "WEBP",
        lossless=True,
        exif=full_exif(1),
        xmp=b"<x>" + canary("xmp").encode() + b"</x>",
        icc_profile=icc_with_text(canary("icc"), "c"),
    )
    return buf.getvalue() + canary("trailer").encode()


def leaky_gif(frames: int = 3) -> bytes:
    ims = [photo(seed=i).convert("P") for i in range(frames)]
    buf = io.BytesIO()
    ims[0].save(
        buf, "GIF", save_all=True, append_images=ims[1:], comment=canary("comment").encode(), loop=0
    )
    data = buf.getvalue()
    xmp = (
        b"\x21\xff\x0bXMP DataXMP" + bytes([len(canary("xmp"))]) + canary("xmp").encode() + b"\x00"
    )
    return data[:-1] + xmp + b"\x3b" + canary("trailer").encode()


def leaky_tiff(pages: int = 2) -> bytes:
    ims = [photo(seed=i) for i in range(pages)]
    buf = io.BytesIO()
    info = {
        270: canary("description"),
        315: canary("artist"),
        305: canary("software"),
        33432: canary("copyright"),
        306: "2024:05:06 07:08:09",
    }
    ims[0].save(
        buf,
        "TIFF",
        save_all=True,
        append_images=ims[1:],
        tiffinfo=info,
        icc_profile=icc_with_text(canary("icc"), "c"),
    )
    return buf.getvalue()


def leaky_heif() -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    buf = io.BytesIO()
    photo(128, 96).save(
        buf,
        "HEIF",
        quality=80,
        exif=full_exif(1, with_thumbnail=False),
        xmp=b"<x>" + canary("xmp").encode() + b"</x>",
    )
    return buf.getvalue()


def canary_forms(text: str) -> list[bytes]:
    return [text.encode(), text.encode("utf-16-le"), text.encode("utf-16-be")]


def inflate_all(data: bytes) -> bytes:
    """Every zlib stream found in a PNG's chunks, decompressed (canaries could hide there)."""
    out = b""
    pos = 8
    while pos + 8 <= len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        body = data[pos + 8 : pos + 8 + length]
        for start in range(min(len(body), 90)):
            try:
                out += zlib.decompressobj().decompress(body[start:], 10_000_000)
                break
            except zlib.error:
                continue
        pos += 12 + length
    return out
