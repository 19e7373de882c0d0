#!/usr/bin/env python3
"""Writes the hostile archives that bundle reading must refuse (tests/unit/test_bundle.c).
Run from this directory: python3 make-hostile.py"""
import io, tarfile

def tar(name, members):
    with tarfile.open(name, "w", format=tarfile.PAX_FORMAT) as t:
        for info, data in members:
            info.mtime = 0
            t.addfile(info, io.BytesIO(data) if data is not None else None)

def reg(path, data=b"{}\n", mode=0o644):
    i = tarfile.TarInfo(path)
    i.size = len(data)
    i.mode = mode
    return i, data

def special(path, kind, target=""):
    i = tarfile.TarInfo(path)
    i.type = kind
    i.linkname = target
    return i, None

tar("dotdot.tar", [reg("../manifest.json")])
tar("dotdot-inner.tar", [reg("a/../../records.ndjson")])
tar("absolute.tar", [reg("/tmp/manifest.json")])
tar("symlink.tar", [special("manifest.json", tarfile.SYMTYPE, "/etc/passwd")])
tar("hardlink.tar", [reg("records.ndjson"), special("manifest.json", tarfile.LNKTYPE, "records.ndjson")])
tar("chardev.tar", [special("manifest.json", tarfile.CHRTYPE)])
tar("fifo.tar", [special("manifest.json", tarfile.FIFOTYPE)])
tar("setuid.tar", [reg("manifest.json", mode=0o4755)])
tar("many.tar", [reg("m%03d" % k) for k in range(100)])
tar("extra-member.tar", [reg("manifest.json"), reg("records.ndjson"), reg("notes.txt")])
tar("duplicate-member.tar", [reg("manifest.json"), reg("manifest.json")])
with open("truncated.tar", "wb") as f:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        i, d = reg("records.ndjson", b"x" * 5000)
        t.addfile(i, io.BytesIO(d))
    f.write(buf.getvalue()[:2000])
open("not-a-tar.bin", "wb").write(b"this is not an archive at all\n" * 30)
