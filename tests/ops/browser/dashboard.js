// Drives the admin dashboard in headless Debian chromium (called by test_admin_e2e.py).
// Usage: node dashboard.js URL TOKEN STUDY_ID DELIVERY_ID SCREENSHOT PROFILE_DIR NOT_ROUTED_STUDY_ID
"use strict";
const { chromium } = require("playwright-core");

async function main() {
  const [url, token, studyId, deliveryId, screenshot, profile, notRoutedId] = process.argv.slice(2);
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: { width: 1400, height: 1500 },
  });
  const page = context.pages()[0] || (await context.newPage());
  const external = [];
  page.on("request", (req) => { if (!req.url().startsWith(url)) external.push(req.url()); });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(`${url}/?refresh=2#token=${encodeURIComponent(token)}`);
  await page.waitForSelector(`#studies tbody tr[data-id="${studyId}"]`, { timeout: 20000 });
  const stateText = await page.textContent(`#studies tbody tr[data-id="${studyId}"] .state`);
  await page.click(`#studies tbody tr[data-id="${studyId}"]`);
  await page.waitForSelector("#timeline tbody tr", { timeout: 10000 });
  const timeline = await page.$$eval("#timeline tbody tr td:nth-child(3)", (tds) => tds.map((t) => t.textContent));
  const button = `#dead-deliveries tbody tr[data-id="${deliveryId}"] button`;
  await page.waitForSelector(button, { timeout: 10000 });
  await page.fill("#user", "browser-test");
  await page.dispatchEvent("#user", "change");
  await page.click(button);
  // After the resend the row leaves the dead-letter list on the next refresh.
  await page.waitForSelector(`#dead-deliveries tbody tr[data-id="${deliveryId}"]`, { state: "detached", timeout: 10000 });
  // A not-routed study offers "Reroute" in its panel; after the click the button says so.
  await page.waitForSelector(`#studies tbody tr[data-id="${notRoutedId}"]`, { timeout: 20000 });
  await page.click(`#studies tbody tr[data-id="${notRoutedId}"]`);
  await page.waitForSelector("#study-actions button", { timeout: 10000 });
  await page.click("#study-actions button");
  await page.waitForFunction(() => {
    const b = document.querySelector("#study-actions button");
    return !b || b.textContent === "routed ✓";
  }, null, { timeout: 10000 });
  await page.waitForFunction(() => Chart.getChart("throughputChart") !== undefined, null, { timeout: 10000 });
  await page.waitForFunction(() => Chart.getChart("queueChart") !== undefined, null, { timeout: 10000 });
  const charts = await page.evaluate(() => ({
    queueTicks: Chart.getChart("queueChart").scales.x.ticks.map((t) => t.label),
    queueMin: Chart.getChart("queueChart").scales.x.min,
    throughputSeries: Chart.getChart("throughputChart").data.datasets.map((d) => d.label),
    throughputTicks: Chart.getChart("throughputChart").scales.x.ticks.map((t) => t.label),
    now: Date.now(),
  }));
  const health = await page.textContent("#health");
  await page.screenshot({ path: screenshot, fullPage: true });
  await context.close();
  console.log(JSON.stringify({ stateText, timeline, health, external, errors, charts }));
}

main().catch((e) => { console.error(e); process.exit(1); });
