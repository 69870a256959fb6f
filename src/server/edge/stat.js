/* clickedge STAT tag: on a partner's page, turns every link to the brand's
   hosts into a tracking link for this partner, at load and for links added
   later; other links are left alone and no link is rewritten twice. */
(function (w, d) {
  "use strict";
  var host = "__HOST__";
  var path = "__PATH__";
  var patterns = __PATTERNS__;
  var origin = "https://" + host;
  function brands(name) {
    name = name.toLowerCase().replace(/\.$/, "");
    for (var i = 0; i < patterns.length; i++) {
      var p = patterns[i];
      if (p.charAt(0) === ".") {
        if (name.length > p.length && name.slice(-p.length) === p) return true;
      } else if (name === p) return true;
    }
    return false;
  }
  function rewrite(a) {
    if (a.hasAttribute("data-clickedge")) return;
    var url;
    try { url = new URL(a.getAttribute("href"), d.baseURI); } catch (e) { return; }
    if ((url.protocol !== "http:" && url.protocol !== "https:") || !brands(url.hostname)) return;
    a.setAttribute("data-clickedge", "stat");
    a.setAttribute("href", origin + path + encodeURIComponent(url.href));
  }
  function scan(node) {
    if (node.nodeType !== 1) return;
    if (node.tagName === "A" && node.hasAttribute("href")) rewrite(node);
    var links = node.querySelectorAll ? node.querySelectorAll("a[href]") : [];
    for (var i = 0; i < links.length; i++) rewrite(links[i]);
  }
  scan(d.documentElement);
  new MutationObserver(function (records) {
    for (var i = 0; i < records.length; i++) {
      var added = records[i].addedNodes;
      for (var j = 0; j < added.length; j++) scan(added[j]);
    }
  }).observe(d.documentElement, { childList: true, subtree: true });
})(window, document);
