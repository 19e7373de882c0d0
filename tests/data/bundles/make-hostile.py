#!/usr/bin/env python3
"""Writes the hostile archives that bundle reading must refuse (tests/unit/test_bundle.c).
Run from this directory: /usr/bin/python3 make-hostile.py (bomb.tar.zst needs the zstd program)."""
import io, subprocess, tarfile

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

# a member that says it holds 4 GiB (over the byte limit) and stops short
with open("huge-member.tar", "wb") as f:
    i = tarfile.TarInfo("records.ndjson")
    i.size = 4 << 30
    f.write(i.tobuf(format=tarfile.USTAR_FORMAT) + b"{}\n" + b"\0" * 509)

# a PAX sparse member: 1 TiB of holes around 16 stored bytes
i = tarfile.TarInfo("records.ndjson")
i.size = 16
i.pax_headers = {"GNU.sparse.size": str(1 << 40), "GNU.sparse.numblocks": "1", "GNU.sparse.map": "0,16"}
tar("sparse.tar", [(i, b"x" * 16)])

# a compression bomb: 64 MiB of zeros in a few kilobytes of zstd
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
    i = tarfile.TarInfo("records.ndjson")
    i.size = 64 << 20
    t.addfile(i, io.BytesIO(bytes(i.size)))
z = subprocess.run(["zstd", "-19", "-q", "-c"], input=buf.getvalue(), stdout=subprocess.PIPE, check=True)
open("bomb.tar.zst", "wb").write(z.stdout)
