// Webinar pages: show the start time in the visitor's own time zone, and
// tell the registration form which zone that is (for the times in emails).
// The page prints the time in the webinar's zone; without JS that stays.
(function () {
  "use strict";
  var options = {
    weekday: "long", year: "numeric", month: "long", day: "numeric",
    hour: "numeric", minute: "2-digit", timeZoneName: "short"
  };
  var zone = "";
  try {
    zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
  } catch (e) { /* very old browser: keep the server's text */ }
  var format;
  try {
    format = new Intl.DateTimeFormat(undefined, options);
  } catch (e) {
    return;
  }
  var nodes = document.querySelectorAll("[data-webinar-time][data-utc]");
  for (var i = 0; i < nodes.length; i++) {
    var when = new Date(nodes[i].getAttribute("data-utc"));
    if (!isNaN(when.getTime())) {
      nodes[i].textContent = format.format(when);
      nodes[i].setAttribute("data-local", "1");
    }
  }
  var note = document.querySelector("[data-tz-note]");
  if (note && zone && nodes.length) {
    note.textContent = "Shown in your time zone (" + zone + ").";
  }
  var fields = document.querySelectorAll("input[data-fill=timezone]");
  for (var j = 0; j < fields.length; j++) {
    if (!fields[j].value) { fields[j].value = zone; }
  }
})();
