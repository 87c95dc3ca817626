// Lịch phát: the picker shows only the fields of the choice made. Without JavaScript every field stays
// visible and the server reads only those of the choice, so nothing depends on this file.
"use strict";

function setupPicker(form) {
  const show = (id, on) => {
    const el = document.getElementById(id);
    if (el) el.hidden = !on;
  };
  const update = () => {
    const kind = (form.querySelector("input[name=kind]:checked") || {}).value;
    const end = (form.querySelector("input[name=end]:checked") || {}).value;
    show("picker-days", kind === "weekdays");
    show("picker-custom", kind === "custom");
    show("picker-until", kind !== "once" && end === "until");
    show("picker-count", kind !== "once" && end === "count");
    show("picker-end", kind !== "once");
  };
  form.addEventListener("change", update);
  update();
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("form[data-picker]").forEach(setupPicker);
});
