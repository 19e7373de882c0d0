#!/usr/bin/env python3
"""A test HTTP server on 127.0.0.1 for datanet-add's URL sources.
usage: httpd.py DIR PORTFILE   serves DIR; /slow sleeps, /loop redirects forever,
/hopN redirects N times to /a.ndjson, /big streams 8 MiB. Exits by itself
after 120 s."""
import http.server, os, sys, threading, time

class H(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        if self.path == "/slow":
            time.sleep(10)
        if self.path.startswith("/loop"):
            self.send_response(302)
            self.send_header("Location", "/loop" + str(len(self.path)))
            self.end_headers()
            return
        if self.path.startswith("/hop") and self.path[4:].isdigit():
            k = int(self.path[4:])
            self.send_response(302)
            self.send_header("Location", "/hop%d" % (k - 1) if k > 1 else "/a.ndjson")
            self.end_headers()
            return
        if self.path == "/big":
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(128):
                    self.wfile.write(b'{"text":"' + b"x" * 65500 + b'"}\n')
            except OSError:
                pass
            return
        super().do_GET()

portfile = os.path.abspath(sys.argv[2])
os.chdir(sys.argv[1])
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
with open(portfile + ".tmp", "w") as f:
    f.write(str(s.server_address[1]))
os.rename(portfile + ".tmp", portfile)
threading.Timer(120, s.shutdown).start()
s.serve_forever()
