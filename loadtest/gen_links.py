#!/usr/bin/env python3
"""Writes N link records as NDJSON, shaped like a large brand program:

- 1,000 tracking hosts (brands); per brand 50 campaigns, ads numbered per link;
- landing pages: each brand has 20 landing URLs, so links share destinations as
  real programs do (DISTINCT_URLS=1 for the worst case: every link its own URL);
- one vanity URL per 50 links, one unique domain per 1,000, a fallback per host.

Usage: gen_links.py N OUT.ndjson
"""
import json
import os
import sys

n = int(sys.argv[1])
out = sys.argv[2]
distinct = os.environ.get("DISTINCT_URLS") == "1"
hosts = 1000
dump = lambda r: json.dumps(r, separators=(",", ":"))

with open(out, "w") as f:
    for h in range(hosts):
        f.write(dump({"type": "fallback", "host": f"brand{h}.sjv.io", "url": f"https://www.brand{h}.com/"}) + "\n")
    written = hosts
    i = 0
    while written < n:
        h = i % hosts
        page = i if distinct else (i // hosts) % 20
        url = f"https://www.brand{h}.com/landing/{page}?utm_source=impact&utm_medium=affiliate"
        if i % 1000 == 999:
            f.write(dump({"type": "domain", "host": f"offer{i}.example", "partner_id": str(i % 5000),
                          "campaign_id": str(9000 + i % 50), "ad_id": str(i), "url": url}) + "\n")
        elif i % 50 == 49:
            f.write(dump({"type": "vanity", "host": f"brand{h}.pxf.io", "slug": f"partner-{i}",
                          "partner_id": str(i % 5000), "campaign_id": str(9000 + i % 50), "ad_id": str(i),
                          "url": url}) + "\n")
        else:
            f.write(dump({"type": "tracking", "host": f"brand{h}.sjv.io", "campaign_id": str(9000 + i % 50),
                          "ad_id": str(i), "url": url}) + "\n")
        written += 1
        i += 1
