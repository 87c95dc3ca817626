// Loa Xã web UI, the fleet page: each time a gateway or one of its devices reports, the server sends
// that gateway's card, rendered (Server-Sent Events); it replaces the card on the page. Without
// JavaScript the page is the same, reloaded by hand.
"use strict";

// A confirmed order waits (up to the fleet's action timeout) for the speaker's own report: say so,
// and do not send it twice.
function setupWait(form) {
  form.addEventListener("submit", () => {
    const status = form.querySelector("[data-wait-status]");
    if (status) status.textContent = form.dataset.wait;
    form.querySelectorAll("button[type=submit]").forEach((b) => { b.disabled = true; });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("form[data-wait]").forEach(setupWait);
  const live = document.querySelector("[data-fleet-live]");
  if (!live || !window.EventSource) return;
  const source = new EventSource(live.dataset.fleetLive);
  source.addEventListener("gateway", (ev) => {
    const msg = JSON.parse(ev.data);
    // the card comes from our own server, rendered and escaped by its templates
    const fresh = document.createElement("template");
    fresh.innerHTML = msg.html;
    const card = live.querySelector(`[data-gateway="${CSS.escape(msg.id)}"]`);
    if (card) {
      card.replaceWith(fresh.content);
    } else {
      live.querySelectorAll("[data-empty]").forEach((p) => p.remove());
      live.appendChild(fresh.content);
    }
    live.dataset.updated = String(msg.at);
  });
  source.addEventListener("connected", (ev) => {
    const banner = live.querySelector("[data-disconnected]");
    if (banner) banner.hidden = JSON.parse(ev.data).connected;
  });
});
