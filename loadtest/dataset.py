#!/usr/bin/env python3
"""The side-by-side dataset: N links in a realistic mix, as clickedge links and as
the same redirects for nginx and HAProxy, plus the request targets.

Writes into OUT/:
  links.ndjson                   clickedge's link records
  nginx.map, nginx-fallback.map  `map $host$uri` entries, and `map $host` fallbacks
  haproxy.map, haproxy-fallback.map   `base` (host+path) entries, and host fallbacks
  targets.txt                    "host path" lines, 100,000 drawn across the mix

Mixes (--mix), on 1,000 brands each with a fallback:
  shared (default)  per 1,000 links: 1 unique domain, 20 vanity URLs, the rest
                    tracking links; each brand's links share 20 landing pages.
  hard              issue 15's harder, realistic mix: every link its own landing
                    URL (a product deep link), every tracking record its own
                    two-host deeplink_hosts, 25% vanity URLs, 5% unique domains
                    (50,000 hosts for 1M links).
nginx maps are exact, so tracking targets all use partner 1234 (clickedge accepts
any partner id).

Usage: dataset.py N OUT [--mix shared|hard]
"""
import json
import os
import random
import sys

n = int(sys.argv[1])
out = sys.argv[2]
mix = sys.argv[4] if len(sys.argv) > 4 and sys.argv[3] == "--mix" else "shared"
if mix not in ("shared", "hard"):
    sys.exit(f"--mix {mix!r}: shared or hard")
hard = mix == "hard"
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
        if hard:
            url = f"https://www.brand{h}.com/p/{i}/item-{i * 7919 % 100003}?sku=S{i}&utm_source=impact"
        else:
            url = f"https://www.brand{h}.com/landing/{(i // hosts) % 20}?utm_source=impact&utm_medium=affiliate"
        campaign, ad = str(9000 + i % 50), str(i)
        is_domain = i % 20 == 19 if hard else i % 1000 == 999
        is_vanity = i % 4 == 1 if hard else i % 50 == 49
        if is_domain:
            host, path = f"offer{i}.example", "/"
            record = {"type": "domain", "host": host, "partner_id": str(i % 5000),
                      "campaign_id": campaign, "ad_id": ad, "url": url}
        elif is_vanity:
            host, path = f"brand{h}.pxf.io", f"/partner-{i}"
            record = {"type": "vanity", "host": host, "slug": f"partner-{i}", "partner_id": str(i % 5000),
                      "campaign_id": campaign, "ad_id": ad, "url": url}
        else:
            host, path = f"brand{h}.sjv.io", f"/c/{partner}/{ad}/{campaign}"
            record = {"type": "tracking", "host": host, "campaign_id": campaign, "ad_id": ad, "url": url}
            if hard:
                record["deeplink_hosts"] = [f"www.brand{h}.com", f"m{i}.brand{h}.com"]
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
