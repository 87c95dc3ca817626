// Loa Xã web UI, the fleet page: swap in the table the server renders each time a device reports
// (Server-Sent Events). Without JavaScript the page is the same, reloaded by hand.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const live = document.querySelector("[data-fleet-live]");
  if (!live || !window.EventSource) return;
  const source = new EventSource(live.dataset.fleetLive);
  source.addEventListener("fleet", (ev) => {
    const msg = JSON.parse(ev.data);
    // the fragment comes from our own server, rendered and escaped by its templates
    live.innerHTML = msg.html;
    live.dataset.updated = String(msg.at);
  });
});
