// Opens a study's SR in OHIF's prebuilt viewer in headless Debian chromium (called by
// tests/dicom_io/test_ohif_viewer.py).
// Usage: node ohif.js URL STUDY_UID SR_SERIES_UID SCREENSHOT PROFILE_DIR EXPECTED_TEXT...
// Prints one JSON line: {found, how, text, errors, consoleErrors, external}.
"use strict";
const { chromium } = require("playwright-core");

async function main() {
  const [url, studyUid, srSeriesUid, screenshot, profile, ...expected] = process.argv.slice(2);
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"],
    viewport: { width: 1600, height: 1000 },
  });
  const page = context.pages()[0] || (await context.newPage());
  const external = [];
  page.on("request", (req) => {
    const u = req.url();
    if (!u.startsWith(url) && !u.startsWith("data:") && !u.startsWith("blob:")) external.push(u);
  });
  const errors = [];
  const consoleErrors = [];
  page.on("pageerror", (e) => errors.push(String(e && e.stack ? e.stack : e)));
  page.on("console", (msg) => { if (msg.type() === "error") consoleErrors.push(msg.text()); });

  // Text of the page including SVG annotation labels drawn by cornerstone tools.
  const pageText = () => page.evaluate(() => {
    const parts = [document.body ? document.body.innerText : ""];
    for (const t of document.querySelectorAll("svg text, svg tspan")) parts.push(t.textContent);
    return parts.join("\n");
  });
  const allFound = async () => {
    const text = await pageText();
    return expected.every((e) => text.includes(e));
  };
  const waitFound = async (ms) => {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      if (await allFound()) return true;
      await page.waitForTimeout(500);
    }
    return false;
  };

  const params = new URLSearchParams({ StudyInstanceUIDs: studyUid, initialSeriesInstanceUID: srSeriesUid });
  await page.goto(`${url}/viewer?${params}`);
  let how = "initialSeriesInstanceUID";
  let found = await waitFound(45000);
  if (!found) {
    // Fall back to what a radiologist does: double-click the SR's thumbnail in the study browser.
    how = "thumbnail double-click";
    const thumb = page.locator('[data-cy="study-browser-thumbnail"], [data-cy="study-browser-thumbnail-no-image"]')
      .filter({ hasText: "SR" }).first();
    try {
      await thumb.dblclick({ timeout: 10000 });
      found = await waitFound(30000);
    } catch (e) {
      how += ` failed: ${e}`;
    }
  }
  // OHIF's first-visit tour covers the viewport: skip it for the screenshot.
  const skip = page.getByText("Skip all", { exact: true });
  if (await skip.count()) await skip.first().click().catch(() => {});
  await page.waitForTimeout(1500); // let the viewport finish drawing before the screenshot
  await page.screenshot({ path: screenshot });
  const text = await pageText();
  await context.close();
  console.log(JSON.stringify({ found, how, text, errors, consoleErrors, external }));
}

main().catch((e) => { console.error(e); process.exit(1); });
