// Opens a page of the demo in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core) and prints what it shows as JSON; used by tests/test_browser.py and
// benches/bench_wasm.py.
//
//   node tools/run-in-chromium.mjs URL [--screenshot FILE] [--timeout SECONDS] [--reload] [--stop]
//                                      [--pick MODEL_FILE]
//
// Waits until the page's body has data-state "done" or "error" (the demo page) or a
// window.benchResult (bench.html). --reload loads the page a second time in the same browser
// profile, to see the model come from the Cache API. --stop clicks Stop once text appears.
// --pick waits for the first load to end, picks MODEL_FILE in the page's file input, and
// generates with it.
import { chromium } from "playwright-core";

const args = process.argv.slice(2);
const url = args[0];
const option = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : fallback;
};
const screenshot = option("--screenshot", null);
const timeoutMs = Number(option("--timeout", "300")) * 1000;
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
  ],
});
const console_ = [];
async function visit(page) {
  await page.goto(url, { waitUntil: "load" });
  const pick = option("--pick", null);
  if (pick) {
    const settled = () => ["ready", "done", "error"].includes(document.body.dataset.state);
    await page.waitForFunction(settled, null, { timeout: timeoutMs, polling: 100 });
    await page.evaluate(() => (document.body.dataset.state = "picking"));
    await page.setInputFiles("#model-file", pick);
    await page.waitForFunction(() => ["ready", "error"].includes(document.body.dataset.state), null, { timeout: timeoutMs, polling: 100 });
    await page.click("#generate");
  }
  if (args.includes("--stop")) {
    await page.waitForFunction(() => document.getElementById("output").textContent.length > 0, null, { timeout: timeoutMs, polling: 20 });
    await page.click("#stop");
  }
  await page.waitForFunction(
    () => ["done", "error"].includes(document.body.dataset.state) || window.benchResult !== undefined,
    null,
    { timeout: timeoutMs, polling: 200 },
  );
  return page.evaluate(() => ({
    state: document.body.dataset.state,
    output: document.getElementById("output")?.textContent ?? null,
    stats: document.getElementById("stats")?.textContent ?? null,
    facts: document.getElementById("model-facts")?.textContent ?? null,
    error: document.getElementById("error")?.textContent ?? null,
    progress: document.getElementById("progress-text")?.textContent ?? null,
    phases: window.binllmPhases ?? [],
    result: window.binllmResult ?? null,
    bench: window.benchResult ?? null,
    userAgent: navigator.userAgent,
  }));
}
let exitCode = 0;
try {
  const context = await browser.newContext({ viewport: { width: 1000, height: 760 } });
  const page = await context.newPage();
  page.on("console", (m) => console_.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => console_.push(`pageerror: ${e.message}`));
  const first = await visit(page);
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  const report = { first, console: console_ };
  if (args.includes("--reload")) report.second = await visit(page);
  process.stdout.write(JSON.stringify(report) + "\n");
} catch (e) {
  process.stdout.write(JSON.stringify({ error: String(e), console: console_ }) + "\n");
  exitCode = 1;
} finally {
  await browser.close();
}
process.exit(exitCode);
