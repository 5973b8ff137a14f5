// A small remote control for a real headless Chromium (playwright-core), driven by
// tests/http/test_dashboard.py: one JSON request per line on stdin, one JSON answer per line on stdout.
//
//   {"id": 1, "op": "launch", "executablePath": "/usr/bin/chromium"}
//   {"id": 2, "op": "page", "name": "a", "viewport": {"width": 1280, "height": 800}}
//   {"id": 3, "op": "goto", "page": "a", "url": "http://..."}
//   {"id": 4, "op": "waitFor", "page": "a", "fn": "(arg) => ...", "arg": ..., "timeout": 20000}
//   {"id": 5, "op": "eval", "page": "a", "fn": "(arg) => ...", "arg": ...}
//   ... click, fill, check, reload, url, screenshot, offline, errors, metrics, closePage, close
//
// Every page records, from its first script on, when each job row shows each revision (a
// MutationObserver on the rows' data-rev attribute, which the dashboard sets last): window.__seen
// holds [job id, state, revision, Date.now() at the change, Date.now() at the next animation frame
// (when the change is drawn)] entries.
'use strict';

const path = require('path');
const readline = require('readline');
const { createRequire } = require('module');

const requireFromNodeTests = createRequire(path.join(__dirname, '..', 'tests', 'node', 'package.json'));
const { chromium } = requireFromNodeTests('playwright-core');

const OBSERVER = `
(() => {
  window.__seen = [];
  let unframed = [];
  const stampFrame = () => {
    const now = Date.now();
    for (const entry of unframed) entry[4] = now;
    unframed = [];
  };
  const observer = new MutationObserver((records) => {
    const now = Date.now();
    for (const record of records) {
      const row = record.target;
      if (!row.dataset || !row.dataset.id || !row.parentElement || row.parentElement.id !== 'rows') continue;
      const entry = [row.dataset.id, row.dataset.state, Number(row.dataset.rev), now, null];
      window.__seen.push(entry);
      if (!unframed.length) requestAnimationFrame(stampFrame);
      unframed.push(entry);
    }
  });
  const start = () => observer.observe(document.documentElement, {
    subtree: true, attributes: true, attributeFilter: ['data-rev'],
  });
  if (document.documentElement) start();
  else document.addEventListener('DOMContentLoaded', start);
})();
`;

let browser = null;
const pages = new Map(); // name -> { context, page, errors }

function fn(source) {
  // A function the page can run: Playwright sends a function's source text to the browser.
  // eslint-disable-next-line no-new-func
  return new Function('arg', `return (${source})(arg);`);
}

function pageOf(name) {
  const entry = pages.get(name);
  if (!entry) throw new Error(`no page ${name}`);
  return entry;
}

const ops = {
  async launch({ executablePath }) {
    browser = await chromium.launch({
      executablePath,
      headless: true,
      args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
    });
    return browser.version();
  },
  async page({ name, viewport, isMobile }) {
    const context = await browser.newContext({ viewport: viewport || { width: 1280, height: 800 }, isMobile: !!isMobile,
      hasTouch: !!isMobile, deviceScaleFactor: 1 });
    await context.addInitScript(OBSERVER);
    const page = await context.newPage();
    const errors = [];
    page.on('pageerror', (error) => errors.push(`pageerror: ${error.message}`));
    page.on('console', (message) => {
      if (message.type() === 'error') errors.push(`console: ${message.text()}`);
    });
    const requests = [];
    page.on('request', (request) => requests.push(request.url()));
    pages.set(name, { context, page, errors, requests });
    return name;
  },
  async goto({ page, url }) {
    await pageOf(page).page.goto(url, { waitUntil: 'load' });
    return pageOf(page).page.url();
  },
  async reload({ page }) {
    await pageOf(page).page.reload({ waitUntil: 'load' });
    return pageOf(page).page.url();
  },
  async url({ page }) {
    return pageOf(page).page.url();
  },
  async waitFor({ page, fn: source, arg, timeout }) {
    const handle = await pageOf(page).page.waitForFunction(fn(source), arg === undefined ? null : arg,
      { timeout: timeout || 30000, polling: 'raf' });
    const value = await handle.jsonValue();
    await handle.dispose();
    return value;
  },
  async eval({ page, fn: source, arg }) {
    return pageOf(page).page.evaluate(fn(source), arg === undefined ? null : arg);
  },
  async click({ page, selector }) {
    await pageOf(page).page.click(selector, { timeout: 10000 });
    return true;
  },
  async fill({ page, selector, value }) {
    await pageOf(page).page.fill(selector, value, { timeout: 10000 });
    return true;
  },
  async check({ page, selector, checked }) {
    await pageOf(page).page.setChecked(selector, checked !== false, { timeout: 10000 });
    return true;
  },
  async select({ page, selector, value }) {
    await pageOf(page).page.selectOption(selector, value, { timeout: 10000 });
    return true;
  },
  async screenshot({ page, path: file, fullPage }) {
    await pageOf(page).page.screenshot({ path: file, fullPage: !!fullPage });
    return file;
  },
  async offline({ page, offline }) {
    await pageOf(page).context.setOffline(!!offline);
    return !!offline;
  },
  async cookies({ page }) {
    return pageOf(page).context.cookies();
  },
  async errors({ page }) {
    return pageOf(page).errors;
  },
  async requests({ page }) {
    return pageOf(page).requests;
  },
  async metrics({ page }) {
    // Chromium's own counters for the page (DevTools' Performance domain): cumulative seconds spent
    // in script, style, layout and tasks, among others.
    const entry = pageOf(page);
    if (!entry.cdp) {
      entry.cdp = await entry.context.newCDPSession(entry.page);
      await entry.cdp.send('Performance.enable');
    }
    const { metrics } = await entry.cdp.send('Performance.getMetrics');
    return Object.fromEntries(metrics.map(({ name, value }) => [name, value]));
  },
  async closePage({ page }) {
    await pageOf(page).context.close();
    pages.delete(page);
    return true;
  },
  async close() {
    if (browser) await browser.close();
    browser = null;
    return true;
  },
};

const lines = readline.createInterface({ input: process.stdin });
let queue = Promise.resolve();
lines.on('line', (line) => {
  if (!line.trim()) return;
  queue = queue.then(async () => {
    let request;
    try {
      request = JSON.parse(line);
      const op = ops[request.op];
      if (!op) throw new Error(`unknown op ${request.op}`);
      const result = await op(request);
      process.stdout.write(`${JSON.stringify({ id: request.id, ok: true, result: result === undefined ? null : result })}\n`);
    } catch (error) {
      process.stdout.write(`${JSON.stringify({ id: request && request.id, ok: false, error: String(error && error.stack || error) })}\n`);
    }
  });
});
lines.on('close', async () => {
  await queue;
  if (browser) await browser.close();
  process.exit(0);
});
