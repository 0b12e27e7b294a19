#!/usr/bin/env python3
"""Serves every agent's metrics textfile as one scrape target, the way a
node_exporter textfile collector serves a machine's: each sample gets an
`agent` label (the agent's directory), and each metric family is written
once. Usage: exporter.py PORT AGENTS_DIR (textfiles at AGENTS_DIR/*/*/metrics.prom).
"""

import glob
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, ROOT = int(sys.argv[1]), sys.argv[2]
CACHE = {}  # path -> (mtime, [(family, help, type, sample line with agent label)])


def parse(path, agent):
    out, family, meta = [], None, {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                kind = line[2:6]
                name, _, rest = line[7:].partition(" ")
                family = name
                meta.setdefault(name, {})[kind] = rest
                continue
            if line.startswith("#"):
                continue
            name_end = min(i for i in (line.find("{"), line.find(" ")) if i >= 0)
            name = line[:name_end]
            if line[name_end] == "{":
                sample = f'{name}{{agent="{agent}",{line[name_end + 1:]}'
            else:
                sample = f'{name}{{agent="{agent}"}}{line[name_end:]}'
            fam = family if family and name.startswith(family) else name
            out.append((fam, meta.get(fam, {}), sample))
    return out


def render():
    families = {}
    for path in glob.glob(os.path.join(ROOT, "*", "*", "metrics.prom")):
        try:
            mtime = os.stat(path).st_mtime_ns
            cached = CACHE.get(path)
            if not cached or cached[0] != mtime:
                agent = os.path.relpath(os.path.dirname(path), ROOT)
                cached = CACHE[path] = (mtime, parse(path, agent))
        except (OSError, ValueError):
            continue
        for fam, meta, sample in cached[1]:
            entry = families.setdefault(fam, {"meta": meta, "samples": []})
            entry["samples"].append(sample)
    lines = []
    for fam, entry in families.items():
        if "HELP" in entry["meta"]:
            lines.append(f"# HELP {fam} {entry['meta']['HELP']}")
        if "TYPE" in entry["meta"]:
            lines.append(f"# TYPE {fam} {entry['meta']['TYPE']}")
        lines.extend(entry["samples"])
    return ("\n".join(lines) + "\n").encode()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = render()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
