// Loa Xã web UI: the few things that need JavaScript. Every task also works without it.
// Texts come from the page (data-* attributes rendered from the catalogue), never from this file.
"use strict";

// A form with data-confirm asks before it is sent (emergency broadcasts, cancelling). The form also
// carries a checkbox the server requires, so the confirmation holds without JavaScript too.
function setupConfirm(form) {
  form.addEventListener("submit", (ev) => {
    const when = form.dataset.confirmWhen;
    if (when) {
      const field = form.elements.namedItem(when.split("=")[0]);
      if (!field || field.value !== when.split("=")[1]) return;
    }
    // say where it will be heard: the ticked communes and speakers, as their labels read
    const where = [...form.querySelectorAll("input[type=checkbox][name=gateways]:checked, input[type=checkbox][name=speakers]:checked")]
      .map((box) => (box.closest("label") || box).textContent.trim()).join("\n");
    if (!window.confirm(form.dataset.confirm + (where ? "\n\n" + where : ""))) ev.preventDefault();
  });
}

// A form with data-upload sends its file with a progress bar, then goes where the server redirects.
function setupUpload(form) {
  const bar = form.querySelector("progress");
  const status = form.querySelector("[data-upload-status]");
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    if (bar) { bar.hidden = false; bar.value = 0; }
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable && bar) bar.value = Math.round((100 * e.loaded) / e.total);
    });
    xhr.addEventListener("load", () => {
      if (xhr.status < 400) { window.location.assign(xhr.responseURL); return; }
      document.open(); document.write(xhr.responseText); document.close();
    });
    xhr.addEventListener("error", () => { if (status) status.textContent = form.dataset.uploadFailed || ""; });
    xhr.send(new FormData(form));
  });
}

// A live board: [data-events] names a Server-Sent Events URL whose messages are the broadcast's
// status; each row [data-speaker="gw/dev"] gets its state in words from the table's data-label-*.
function setupBoard(board) {
  const source = new EventSource(board.dataset.events);
  const labels = board.dataset;
  const label = (state) => labels["label" + state.charAt(0).toUpperCase() + state.slice(1)] || state;
  const communes = JSON.parse(board.dataset.communes || "{}");
  const tbody = board.querySelector("[data-rows]");
  // a speaker the scheduler learns of while the broadcast plays gets its row
  const addRow = (sp) => {
    const row = document.createElement("tr");
    row.dataset.speaker = sp.gateway + "/" + sp.device;
    for (const [cls, text] of [["", communes[sp.gateway] || sp.gateway], ["", sp.device], ["state", ""], ["reason", ""]]) {
      const td = document.createElement("td");
      if (cls) td.className = cls;
      td.textContent = text;
      row.appendChild(td);
    }
    tbody.appendChild(row);
    const empty = board.querySelector("[data-empty]");
    if (empty) empty.hidden = true;
    return row;
  };
  source.addEventListener("status", (ev) => {
    const st = JSON.parse(ev.data);
    for (const sp of st.speakers) {
      const row = board.querySelector(`[data-speaker="${CSS.escape(sp.gateway + "/" + sp.device)}"]`) || addRow(sp);
      const cell = row.querySelector(".state");
      cell.textContent = label(sp.state);
      cell.className = "state state-" + sp.state;
      row.dataset.state = sp.state;
      const reason = row.querySelector(".reason");
      if (reason) reason.textContent = sp.reason_text || sp.reason || "";
    }
    for (const out of board.querySelectorAll("[data-count]")) {
      out.textContent = String((st.summary || {})[out.dataset.count] || 0);
    }
    if (st.done) source.close();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("form[data-confirm]").forEach(setupConfirm);
  document.querySelectorAll("form[data-upload]").forEach(setupUpload);
  document.querySelectorAll("[data-events]").forEach(setupBoard);
});
