// Shared by the browser specs (chat.spec.mjs, screens.spec.mjs): steps with
// a time budget, polling waits, diagnostics on failure, and the layout and
// accessibility checks every screen passes.

import { chromium } from 'playwright-core';
import os from 'node:os';
import path from 'node:path';

export const WAIT_MS = 10_000;
export const PASSWORD = 'correct horse battery';
export const NARROW = 390;
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

/** The run's state: the browser, the pages by who uses them, the errors they reported. */
export const run = { browser: null, step: 'start-up', pages: {}, problems: [] };

export const started = Date.now();
const pages = run.pages;
const problems = run.problems; // uncaught page errors and CSP violations: each fail the run

export function log(line) {
  const t = ((Date.now() - started) / 1000).toFixed(1).padStart(5);
  console.log(`[e2e ${t}s] ${line}`);
}

export async function diagnose() {
  for (const [who, page] of Object.entries(pages)) {
    if (page.isClosed()) continue;
    try {
      const state = await page.evaluate(() => ({
        conn: document.getElementById('conn-text')?.textContent,
        notice: document.getElementById('notice')?.hidden ? '' : document.getElementById('notice-text')?.textContent,
        errors: [...document.querySelectorAll('.form-error:not([hidden])')].map((e) => e.textContent),
        messages: [...document.querySelectorAll('#messages li')].map((li) => `#${li.dataset.seq} ${li.innerText.replace(/\s+/g, ' ')}`),
        online: [...document.querySelectorAll('#online-list li')].map((li) => li.textContent),
        view: document.body.dataset.view,
        url: location.href,
        statuses: [...document.querySelectorAll('[role="status"]')].map((e) => e.textContent).filter(Boolean),
      }));
      console.error(`  ${who}: ${JSON.stringify(state, null, 2).replace(/\n/g, '\n  ')}`);
      const shot = path.join(os.tmpdir(), `roomcast-e2e-failure-${who}.png`);
      await page.screenshot({ path: shot, timeout: 3000 });
      console.error(`  ${who}'s window: ${shot}`);
    } catch (err) {
      console.error(`  ${who}: no diagnostics (${err.message})`);
    }
  }
}

let failing = false;
export async function fail(message) {
  if (failing) return;
  failing = true;
  console.error(`FAILED during "${run.step}": ${message}`);
  await Promise.race([diagnose(), new Promise((r) => setTimeout(r, 8000))]);
  if (run.browser) await Promise.race([run.browser.close().catch(() => {}), new Promise((r) => setTimeout(r, 3000))]);
  process.exit(1);
}

let watchdog = null;
/** Fails the run if it lasts longer than `budget` ms. */
export function startWatchdog(budget) {
  watchdog = setTimeout(() => fail(`the run took longer than ${budget / 1000} s`), budget);
}

export async function step(name, work) {
  run.step = name;
  const t0 = Date.now();
  await work();
  log(`ok  ${name} (${Date.now() - t0} ms)`);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `probe` until it returns something truthy; fails clearly after `timeout`. */
export async function until(what, probe, timeout = WAIT_MS) {
  const deadline = Date.now() + timeout;
  let last = '';
  for (;;) {
    try {
      const value = await probe();
      if (value) return value;
    } catch (err) {
      last = `: ${err.message.split('\n')[0]}`;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting until ${what}${last}`);
    await sleep(100);
  }
}

export const text = (locator) => locator.innerText({ timeout: 1000 });

export async function expectText(locator, expected, what) {
  return until(`${what} reads "${expected}"`, async () => (await text(locator)).includes(expected));
}

export const messageItem = (page, content) => page.locator('#messages li.msg', { hasText: content });

export async function onlineNames(page) {
  return page.locator('#online-list li').allInnerTexts();
}

export async function registerThroughUi(page, base, username) {
  await page.goto(`${base}/`, { timeout: WAIT_MS });
  const form = page.locator('#register-form');
  await form.getByLabel('Username', { exact: true }).fill(username, { timeout: WAIT_MS });
  await form.getByLabel('Email', { exact: true }).fill(`${username}@example.com`);
  await form.getByLabel('Password', { exact: true }).fill(PASSWORD);
  await form.getByRole('button', { name: 'Create account' }).click();
  await expectText(page.locator('#me-name'), username, `${username}'s signed-in name`);
  await page.locator('#chat-view').waitFor({ state: 'visible', timeout: WAIT_MS });
}

export async function logInThroughUi(page, username, password) {
  const form = page.locator('#login-form');
  await form.getByLabel('Username or email', { exact: true }).fill(username, { timeout: WAIT_MS });
  await form.getByLabel('Password', { exact: true }).fill(password);
  await form.getByRole('button', { name: 'Log in' }).click();
}

/**
 * At phone width nothing makes the page scroll sideways, no element reaches
 * past the window's right edge (one inside a scroller would not widen the
 * page, but would still be cut off), and the composer's input and Send button
 * (when `composer`) are on screen.
 */
export async function checkNarrowLayout(page, where, { composer = false } = {}) {
  const layout = await page.evaluate(() => {
    const width = window.innerWidth;
    const wide = [...document.querySelectorAll('body *')]
      .filter((el) => {
        const r = el.getBoundingClientRect();
        return r.width > 0 && r.right > width + 0.5;
      })
      .slice(0, 5)
      .map((el) => `${el.tagName.toLowerCase()}${el.id ? `#${el.id}` : ''}.${el.className} right=${Math.round(el.getBoundingClientRect().right)}`);
    return { width, height: window.innerHeight, scrollWidth: document.documentElement.scrollWidth, wide };
  });
  if (layout.width !== NARROW) throw new Error(`${where}: the window is ${layout.width} px wide, not ${NARROW}`);
  if (layout.scrollWidth > layout.width || layout.wide.length) {
    throw new Error(`${where}: the page is ${layout.scrollWidth} px wide in a ${layout.width} px window; past the edge: ${layout.wide.join('; ')}`);
  }
  if (!composer) return;
  for (const [what, locator] of [
    ['the message input', page.getByLabel('Message', { exact: true })],
    ['the Send button', page.getByRole('button', { name: 'Send', exact: true })],
  ]) {
    await locator.waitFor({ state: 'visible', timeout: WAIT_MS });
    const box = await locator.boundingBox();
    if (!box || box.x < 0 || box.x + box.width > layout.width || box.y < 0 || box.y + box.height > layout.height) {
      throw new Error(`${where}: ${what} is not on screen: ${JSON.stringify(box)} in ${layout.width}x${layout.height}`);
    }
  }
}

/**
 * Accessibility of what `page` shows, with plain DOM queries: the page has a
 * `lang`, one `main` landmark and visible headings; every form control and
 * button has an accessible name (label, aria-label or aria-labelledby; for a
 * button also its text); every image has `alt`; a `:focus-visible` rule draws
 * an outline, and every element Tab reaches shows one. In a room (`room`),
 * the message list sits in a live region (aria-live or role=log) so that a
 * screen reader reads new messages. Throws with the list of offenders.
 */
export async function checkAccessibility(page, where, { room = false } = {}) {
  const offenders = await page.evaluate((room) => {
    const found = [];
    const describe = (el) => {
      const classes = typeof el.className === 'string' && el.className.trim() ? `.${el.className.trim().split(/\s+/).join('.')}` : '';
      return `<${el.tagName.toLowerCase()}${el.id ? `#${el.id}` : ''}${classes}>`;
    };
    // The text a screen reader would read for an element: aria-hidden parts left out, images by their alt.
    const spoken = (node) => [...node.childNodes].map((child) => {
      if (child.nodeType === Node.TEXT_NODE) return child.textContent;
      if (child.nodeType !== Node.ELEMENT_NODE || child.getAttribute('aria-hidden') === 'true') return '';
      return child.tagName === 'IMG' ? child.getAttribute('alt') || '' : spoken(child);
    }).join('').trim();
    const accessibleName = (el) => {
      const ids = (el.getAttribute('aria-labelledby') || '').split(/\s+/).filter(Boolean);
      const byIds = ids.map((id) => document.getElementById(id)).filter(Boolean).map(spoken).join(' ').trim();
      if (byIds) return byIds;
      const label = (el.getAttribute('aria-label') || '').trim();
      if (label) return label;
      const labels = [...(el.labels || [])].map(spoken).join(' ').trim();
      if (labels) return labels;
      if (el.tagName === 'BUTTON' || el.getAttribute('role') === 'button') return spoken(el);
      if (el.tagName === 'INPUT' && ['submit', 'button', 'reset'].includes(el.type)) return el.value.trim();
      return '';
    };
    const shown = (el) => el.getClientRects().length > 0;

    if (!document.documentElement.getAttribute('lang')) found.push('<html> has no lang');
    const mains = document.querySelectorAll('main, [role="main"]');
    if (mains.length !== 1) found.push(`${mains.length} main landmarks, not one`);
    const headings = [...document.querySelectorAll('h1, h2, h3, h4, h5, h6, [role="heading"]')].filter(shown);
    if (!headings.some((h) => h.tagName === 'H1')) found.push('no visible <h1>');
    if (!headings.some((h) => h.tagName !== 'H1' && mains[0]?.contains(h))) found.push('no visible heading in <main>');
    for (const el of document.querySelectorAll('input:not([type="hidden"]), textarea, select')) {
      if (!accessibleName(el)) found.push(`${describe(el)} has no accessible name (label, aria-label or aria-labelledby)`);
    }
    for (const el of document.querySelectorAll('button, [role="button"], input[type="submit"], input[type="button"], input[type="reset"]')) {
      if (!accessibleName(el)) found.push(`${describe(el)} (a button) has no accessible name`);
    }
    for (const el of document.querySelectorAll('img, input[type="image"]')) {
      if (!el.hasAttribute('alt')) found.push(`${describe(el)} has no alt`);
    }
    for (const el of document.querySelectorAll('[role="img"]')) {
      if (!accessibleName(el)) found.push(`${describe(el)} (role=img) has no accessible name`);
    }
    // The shorthand, since a var() in it leaves the longhands unset in the CSSOM.
    const outlined = [...document.styleSheets].some((sheet) => [...sheet.cssRules].some((rule) => {
      const outline = (rule.style?.getPropertyValue('outline') || rule.style?.outlineStyle || '').trim();
      return (rule.selectorText || '').includes(':focus-visible') && outline && !/^(none|0(px)?)(\s|$)/.test(outline);
    }));
    if (!outlined) found.push('no :focus-visible rule draws an outline');
    if (room) {
      const list = document.getElementById('messages');
      let politeness = null;
      for (let el = list; el && politeness === null; el = el.parentElement) {
        const live = el.getAttribute('aria-live');
        const role = el.getAttribute('role');
        if (live) politeness = live;
        else if (role === 'log' || role === 'status') politeness = 'polite';
        else if (role === 'alert') politeness = 'assertive';
      }
      if (politeness !== 'polite' && politeness !== 'assertive') {
        found.push(`the message list ${list ? describe(list) : '#messages'} is not in a live region (aria-live: ${politeness ?? 'none'})`);
      }
    }
    return found;
  }, room);

  // Every stop of the Tab order shows where the focus is.
  const first = await page.evaluate(() => document.activeElement?.id || '');
  const seen = new Set();
  for (let i = 0; i < 60; i += 1) {
    await page.keyboard.press('Tab');
    const stop = await page.evaluate(() => {
      const el = document.activeElement;
      if (!el || el === document.body) return null;
      const classes = typeof el.className === 'string' && el.className.trim() ? `.${el.className.trim().split(/\s+/).join('.')}` : '';
      const who = `<${el.tagName.toLowerCase()}${el.id ? `#${el.id}` : ''}${classes}>${el.dataset.seq ? ` #${el.dataset.seq}` : ''}`;
      const cs = getComputedStyle(el);
      const ring = (cs.outlineStyle !== 'none' && parseFloat(cs.outlineWidth) > 0) || cs.boxShadow !== 'none';
      return { who, ring, label: el.getAttribute('aria-label') || el.textContent.trim().slice(0, 30) };
    });
    if (!stop) continue;
    const key = `${stop.who} ${stop.label}`;
    if (seen.has(key)) break;
    seen.add(key);
    if (!stop.ring) offenders.push(`${stop.who} "${stop.label}" shows no focus outline when reached by Tab`);
  }
  if (seen.size < 3) offenders.push(`Tab reached only ${seen.size} elements (from #${first})`);
  log(`    ${where}: ${seen.size} Tab stops, each with a focus outline`);
  if (offenders.length) throw new Error(`${where}: accessibility problems:\n  ${offenders.join('\n  ')}`);
}

/** How a screen reader treats additions to the element: the aria-live of its live region, or null. */
export async function politeness(locator) {
  return locator.evaluate((node) => {
    for (let el = node; el; el = el.parentElement) {
      const live = el.getAttribute('aria-live');
      const role = el.getAttribute('role');
      if (live) return live;
      if (role === 'log' || role === 'status') return 'polite';
      if (role === 'alert') return 'assertive';
    }
    return null;
  });
}

export async function waitConnected(page, who) {
  await until(`${who} is connected`, async () =>
    (await page.locator('#conn').getAttribute('data-state', { timeout: 1000 })) === 'connected');
}

export async function send(page, content, how) {
  const input = page.getByLabel('Message', { exact: true });
  await input.fill(content, { timeout: WAIT_MS });
  if (how === 'enter') await input.press('Enter');
  else await page.getByRole('button', { name: 'Send', exact: true }).click();
}

/** Debian's chromium, headless, with the flags a shared machine wants. */
export async function launch() {
  run.browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 20_000,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  log(`chromium ${run.browser.version()}`);
  return run.browser;
}

/** Keeps `page` for diagnostics; its uncaught errors and CSP refusals fail the run. */
export function watch(who, page) {
  pages[who] = page;
  page.setDefaultTimeout(WAIT_MS);
  page.on('pageerror', (err) => problems.push(`${who}: uncaught ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const line = msg.text();
    if (/Content.Security.Policy|Refused to/i.test(line)) problems.push(`${who}: ${line}`);
    else log(`${who} console: ${line}`);
  });
  return page;
}

/** The end of a run: every page error fails it; otherwise PASSED. */
export async function finish() {
  if (problems.length) throw new Error(`the page reported errors:\n  ${problems.join('\n  ')}`);
  await run.browser.close();
  clearTimeout(watchdog);
  log(`PASSED in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}
