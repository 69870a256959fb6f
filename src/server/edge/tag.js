/* clickedge first-party tag: keeps the click id from the landing page's URL in
   the cookie ce_cid (that id and nothing else), and offers
   clickedge.track(event, fields), which sends the action by beacon to /v1/px
   on the tracking host that served this script. No other global, no eval. */
(function (w, d) {
  "use strict";
  if (w.clickedge) return;
  var script = d.currentScript;
  var param = (script && script.getAttribute("data-click-id-param")) || "__CLICK_ID_PARAM__";
  var endpoint = (script ? new URL(script.src, d.baseURI).origin : "") + "/v1/px?channel=tag";
  var ULID = /^[0-7][0-9A-HJKMNP-TV-Z]{25}$/;
  function stored() {
    var m = d.cookie.match(/(?:^|;\s*)ce_cid=([^;]*)/);
    return m && ULID.test(m[1]) ? m[1] : null;
  }
  function keep() {
    var id;
    try { id = new URL(w.location.href).searchParams.get(param); } catch (e) { return; }
    if (!id) return;
    id = id.toUpperCase();
    if (!ULID.test(id)) return;
    d.cookie = "ce_cid=" + id + "; Max-Age=2592000; Path=/; SameSite=Lax" +
      (w.location.protocol === "https:" ? "; Secure" : "");
  }
  function track(event, fields) {
    var action = {}, k;
    if (fields) {
      for (k in fields) {
        if (Object.prototype.hasOwnProperty.call(fields, k)) action[k] = fields[k];
      }
    }
    action.event = event;
    if (action.click_id == null) {
      var id = stored();
      if (id) action.click_id = id;
    }
    var body = JSON.stringify(action);
    var nav = w.navigator;
    if (nav.sendBeacon && nav.sendBeacon(endpoint, body)) return true;
    if (w.fetch) {
      w.fetch(endpoint, { method: "POST", body: body, keepalive: true, mode: "no-cors" });
      return true;
    }
    return false;
  }
  keep();
  w.clickedge = Object.freeze({ track: track, clickId: stored });
})(window, document);
