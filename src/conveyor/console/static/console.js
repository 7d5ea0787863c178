// Progressive enhancement only: every page works without this file.
(function () {
  "use strict";
  const local = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

  function localTimes(root) {
    root.querySelectorAll("time[datetime]:not([data-local])").forEach(function (node) {
      const moment = new Date(node.getAttribute("datetime"));
      if (isNaN(moment)) return;
      node.title = node.textContent;  // UTC on hover
      node.textContent = local.format(moment);
      node.dataset.local = "1";
    });
  }

  function charts() {
    if (!window.Chart) return;
    const throughput = document.getElementById("throughput-data");
    if (throughput && !throughput.dataset.drawn) {
      const points = JSON.parse(throughput.textContent);
      new Chart(document.getElementById("throughput"), {
        type: "bar",
        data: { labels: points.map(p => new Date(p.minute).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })),
                datasets: [{ label: "orders settled per minute", data: points.map(p => p.settled), backgroundColor: "#1d4ed8" }] },
        options: { animation: false, plugins: { legend: { display: false } }, scales: { y: { beginAtZero: true } } },
      });
      throughput.dataset.drawn = "1";
    }
    const categories = document.getElementById("categories-data");
    if (categories && !categories.dataset.drawn) {
      const counts = JSON.parse(categories.textContent);
      new Chart(document.getElementById("categories"), {
        type: "bar",
        data: { labels: Object.keys(counts).map(c => c.replaceAll("_", " ")),
                datasets: [{ label: "discrepancies", data: Object.values(counts), backgroundColor: "#b45309" }] },
        options: { indexAxis: "y", animation: false, plugins: { legend: { display: false } } },
      });
      categories.dataset.drawn = "1";
    }
  }

  function confirmations(root) {
    root.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    confirmations(document);
    charts();
  });
  window.addEventListener("load", charts);
  document.addEventListener("htmx:afterSwap", function (event) { localTimes(event.target); });
})();
