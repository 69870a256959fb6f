#!/usr/bin/env python3
"""The side-by-side dataset: N links in a realistic mix, as clickedge links and as
the same redirects for nginx and HAProxy, plus the request targets.

Writes into OUT/:
  links.ndjson                   clickedge's link records
  nginx.map, nginx-fallback.map  `map $host$uri` entries, and `map $host` fallbacks
  haproxy.map, haproxy-fallback.map   `base` (host+path) entries, and host fallbacks
  targets.txt                    "host path" lines, 100,000 drawn across the mix

Mix per 1,000 links: 1 unique domain, 20 vanity URLs, the rest tracking links;
1,000 brands, each with a fallback and 20 landing pages. nginx maps are exact, so
tracking targets all use partner 1234 (clickedge accepts any partner id).

Usage: dataset.py N OUT
"""
import json
import os
import random
import sys

n = int(sys.argv[1])
out = sys.argv[2]
os.makedirs(out, exist_ok=True)
hosts = 1000
partner = "1234"
dump = lambda r: json.dumps(r, separators=(",", ":"))
random.seed(7)

targets = []
target_every = max(1, n // 100_000)
with open(f"{out}/links.ndjson", "w") as links, open(f"{out}/nginx.map", "w") as nginx, \
        open(f"{out}/haproxy.map", "w") as haproxy, open(f"{out}/nginx-fallback.map", "w") as nginx_fb, \
        open(f"{out}/haproxy-fallback.map", "w") as haproxy_fb:
    for h in range(hosts):
        host, url = f"brand{h}.sjv.io", f"https://www.brand{h}.com/"
        links.write(dump({"type": "fallback", "host": host, "url": url}) + "\n")
        nginx_fb.write(f"{host} {url};\n")
        haproxy_fb.write(f"{host} {url}\n")
    for i in range(n - hosts):
        h = i % hosts
        url = f"https://www.brand{h}.com/landing/{(i // hosts) % 20}?utm_source=impact&utm_medium=affiliate"
        campaign, ad = str(9000 + i % 50), str(i)
        if i % 1000 == 999:
            host, path = f"offer{i}.example", "/"
            record = {"type": "domain", "host": host, "partner_id": str(i % 5000),
                      "campaign_id": campaign, "ad_id": ad, "url": url}
        elif i % 50 == 49:
            host, path = f"brand{h}.pxf.io", f"/partner-{i}"
            record = {"type": "vanity", "host": host, "slug": f"partner-{i}", "partner_id": str(i % 5000),
                      "campaign_id": campaign, "ad_id": ad, "url": url}
        else:
            host, path = f"brand{h}.sjv.io", f"/c/{partner}/{ad}/{campaign}"
            record = {"type": "tracking", "host": host, "campaign_id": campaign, "ad_id": ad, "url": url}
        links.write(dump(record) + "\n")
        nginx.write(f"{host}{path} {url};\n")
        haproxy.write(f"{host}{path} {url}\n")
        if i % target_every == 0:
            targets.append(f"{host} {path}")
    # A few requests for paths no record matches: each host's fallback answers.
    for h in range(0, hosts, 10):
        targets.append(f"brand{h}.sjv.io /no/such/link")

random.shuffle(targets)
with open(f"{out}/targets.txt", "w") as f:
    f.write("\n".join(targets) + "\n")
