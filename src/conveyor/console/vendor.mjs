// Copies the served files out of node_modules into static/vendor/ (build output, gitignored).
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const files = {
  "htmx.min.js": "htmx.org/dist/htmx.min.js",
  "chart.umd.min.js": "chart.js/dist/chart.umd.min.js",
  "pico.min.css": "@picocss/pico/css/pico.min.css",
};
mkdirSync(join(here, "static", "vendor"), { recursive: true });
for (const [target, source] of Object.entries(files)) {
  copyFileSync(join(here, "node_modules", source), join(here, "static", "vendor", target));
}
