// Browser end-to-end test of the web client, run by api/tests/api/browser.rs.
//
// Two roomcast nodes share one database and one broker. Alice uses node 1 in
// a desktop-sized window, Bob node 2 in a phone-sized one (390 px); both
// register through the UI, Bob logs out and back in through the login form,
// they meet in a public room, talk, edit and delete, and see each other come
// and go; Bob's narrow window never scrolls sideways. The login page and the
// room pass accessibility checks (names, landmarks, headings, a live message
// list, visible focus) done with plain DOM queries. Debian's chromium,
// headless; every wait has a timeout and the whole run a 60 s budget. Exit
// status 0 only if every step passed.
//
//   ROOMCAST_NODE1_URL, ROOMCAST_NODE2_URL   the two nodes (required)
//   ROOMCAST_SCREENSHOT                      where Alice's window is saved (default
//                                            target/e2e/screenshot.png; docs/screenshot.png,
//                                            the README's, with ROOMCAST_UPDATE_SCREENSHOT=1)
//   ROOMCAST_SCREENSHOT_NARROW               where Bob's is saved (optional)
//   CHROMIUM                                 the browser (default /usr/bin/chromium)

import { mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const NODE1 = process.env.ROOMCAST_NODE1_URL;
const NODE2 = process.env.ROOMCAST_NODE2_URL;
const SCREENSHOT = process.env.ROOMCAST_SCREENSHOT || (process.env.ROOMCAST_UPDATE_SCREENSHOT === '1'
  ? path.join(here, '..', '..', 'docs', 'screenshot.png')
  : path.join(here, '..', '..', 'target', 'e2e', 'screenshot.png'));
const SCREENSHOT_NARROW = process.env.ROOMCAST_SCREENSHOT_NARROW || '';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const TOTAL_BUDGET_MS = 60_000;
const WAIT_MS = 10_000;
const PASSWORD = 'correct horse battery';
const ROOM = 'launch-plan';
const NARROW = 390;

const started = Date.now();
let currentStep = 'start-up';
let browser = null;
const pages = {};
const problems = []; // uncaught page errors and CSP violations: each fails the run

function log(line) {
  const t = ((Date.now() - started) / 1000).toFixed(1).padStart(5);
  console.log(`[e2e ${t}s] ${line}`);
}

async function diagnose() {
  for (const [who, page] of Object.entries(pages)) {
    if (page.isClosed()) continue;
    try {
      const state = await page.evaluate(() => ({
        conn: document.getElementById('conn-text')?.textContent,
        notice: document.getElementById('notice')?.hidden ? '' : document.getElementById('notice-text')?.textContent,
        errors: [...document.querySelectorAll('.form-error:not([hidden])')].map((e) => e.textContent),
        messages: [...document.querySelectorAll('#messages li')].map((li) => `#${li.dataset.seq} ${li.innerText.replace(/\s+/g, ' ')}`),
        online: [...document.querySelectorAll('#online-list li')].map((li) => li.textContent),
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
async function fail(message) {
  if (failing) return;
  failing = true;
  console.error(`FAILED during "${currentStep}": ${message}`);
  await Promise.race([diagnose(), new Promise((r) => setTimeout(r, 8000))]);
  if (browser) await Promise.race([browser.close().catch(() => {}), new Promise((r) => setTimeout(r, 3000))]);
  process.exit(1);
}

const watchdog = setTimeout(() => fail(`the run took longer than ${TOTAL_BUDGET_MS / 1000} s`), TOTAL_BUDGET_MS);

async function step(name, work) {
  currentStep = name;
  const t0 = Date.now();
  await work();
  log(`ok  ${name} (${Date.now() - t0} ms)`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `probe` until it returns something truthy; fails clearly after `timeout`. */
async function until(what, probe, timeout = WAIT_MS) {
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

const text = (locator) => locator.innerText({ timeout: 1000 });

async function expectText(locator, expected, what) {
  return until(`${what} reads "${expected}"`, async () => (await text(locator)).includes(expected));
}

const messageItem = (page, content) => page.locator('#messages li.msg', { hasText: content });

async function onlineNames(page) {
  return page.locator('#online-list li').allInnerTexts();
}

async function registerThroughUi(page, base, username) {
  await page.goto(`${base}/`, { timeout: WAIT_MS });
  const form = page.locator('#register-form');
  await form.getByLabel('Username', { exact: true }).fill(username, { timeout: WAIT_MS });
  await form.getByLabel('Email', { exact: true }).fill(`${username}@example.com`);
  await form.getByLabel('Password', { exact: true }).fill(PASSWORD);
  await form.getByRole('button', { name: 'Create account' }).click();
  await expectText(page.locator('#me-name'), username, `${username}'s signed-in name`);
  await page.locator('#chat-view').waitFor({ state: 'visible', timeout: WAIT_MS });
}

async function logInThroughUi(page, username, password) {
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
async function checkNarrowLayout(page, where, { composer = false } = {}) {
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
async function checkAccessibility(page, where, { room = false } = {}) {
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
async function politeness(locator) {
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

async function waitConnected(page, who) {
  await until(`${who} is connected`, async () =>
    (await page.locator('#conn').getAttribute('data-state', { timeout: 1000 })) === 'connected');
}

async function send(page, content, how) {
  const input = page.getByLabel('Message', { exact: true });
  await input.fill(content, { timeout: WAIT_MS });
  if (how === 'enter') await input.press('Enter');
  else await page.getByRole('button', { name: 'Send', exact: true }).click();
}

async function main() {
  if (!NODE1 || !NODE2) throw new Error('set ROOMCAST_NODE1_URL and ROOMCAST_NODE2_URL');
  log(`node 1 ${NODE1}, node 2 ${NODE2}`);

  await step('launch chromium', async () => {
    browser = await chromium.launch({
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
    log(`chromium ${browser.version()}`);
  });

  const alice = await browser.newContext({ viewport: { width: 1180, height: 760 }, colorScheme: 'light' });
  const bob = await browser.newContext({ viewport: { width: NARROW, height: 780 }, colorScheme: 'light', hasTouch: true });
  // Test instrumentation only: keep Alice's sockets in reach so that one can be cut.
  await alice.addInitScript(() => {
    const Native = window.WebSocket;
    window.__sockets = [];
    window.WebSocket = class extends Native {
      constructor(...args) {
        super(...args);
        window.__sockets.push(this);
      }
    };
  });
  const a = await alice.newPage();
  const b = await bob.newPage();
  pages.alice = a;
  pages.bob = b;
  for (const [who, page] of Object.entries(pages)) {
    page.setDefaultTimeout(WAIT_MS);
    page.on('pageerror', (err) => problems.push(`${who}: uncaught ${err.message}`));
    page.on('console', (msg) => {
      if (msg.type() !== 'error') return;
      const line = msg.text();
      if (/Content.Security.Policy|Refused to/i.test(line)) problems.push(`${who}: ${line}`);
      else log(`${who} console: ${line}`);
    });
  }

  await step('the page is served with a strict Content-Security-Policy', async () => {
    const res = await a.request.get(`${NODE1}/`);
    const csp = res.headers()['content-security-policy'] || '';
    if (!/default-src 'none'|default-src 'self'/.test(csp)) throw new Error(`no strict CSP on /: "${csp}"`);
    if (/https?:/.test(csp.replace(/connect-src[^;]*/, ''))) throw new Error(`CSP names outside hosts: "${csp}"`);
    for (const [file, type] of [['/app.js', 'javascript'], ['/style.css', 'text/css']]) {
      const r = await a.request.get(`${NODE1}${file}`);
      if (!r.ok() || !(r.headers()['content-type'] || '').includes(type)) {
        throw new Error(`${file}: ${r.status()} ${r.headers()['content-type']}`);
      }
    }
  });

  await step('both register through the UI (alice on node 1, bob on node 2)', async () => {
    await Promise.all([registerThroughUi(a, NODE1, 'alice'), registerThroughUi(b, NODE2, 'bob')]);
  });

  await step('bob logs out and back in through the login form (a wrong password first)', async () => {
    await b.getByRole('button', { name: 'Log out' }).click();
    await b.locator('#auth-view').waitFor({ state: 'visible' });
    await checkNarrowLayout(b, "bob's login page");
    await checkAccessibility(b, "bob's login page");
    await logInThroughUi(b, 'bob', 'not the password');
    await expectText(b.locator('#login-form .form-error'), 'wrong username or password', "bob's login error");
    await logInThroughUi(b, 'bob', PASSWORD);
    await expectText(b.locator('#me-name'), 'bob', "bob's signed-in name");
    await b.locator('#chat-view').waitFor({ state: 'visible' });
    const token = await b.evaluate(() => sessionStorage.getItem('roomcast.token'));
    if (!token) throw new Error('the login form left no token');
  });

  await step('alice creates a public room and is in it', async () => {
    await a.getByLabel('Name', { exact: true }).fill(ROOM);
    await a.getByLabel('Who can join').selectOption('public');
    await a.getByRole('button', { name: 'Create room' }).click();
    await expectText(a.locator('#room-title'), ROOM, "alice's room title");
    await waitConnected(a, 'alice');
    await until('alice sees herself online', async () => (await onlineNames(a)).includes('alice (you)'));
    await until('the room is listed for alice', async () =>
      (await a.locator('#room-list [aria-current="true"]').count()) === 1);
  });

  await step("a problem+json error is shown from its detail (bob reuses alice's room name)", async () => {
    const form = b.locator('#create-room-form');
    await form.getByLabel('Name', { exact: true }).fill(ROOM);
    await form.getByRole('button', { name: 'Create room' }).click();
    await expectText(form.locator('.form-error'), 'a room with that name exists', "bob's create-room error");
    await form.getByLabel('Name', { exact: true }).fill('');
  });

  await step('bob finds the room by searching and opens it', async () => {
    await b.getByLabel('Search rooms').fill('launch');
    const link = b.locator('#room-list button', { hasText: ROOM });
    await link.waitFor({ state: 'visible' });
    await link.click();
    await expectText(b.locator('#room-title'), ROOM, "bob's room title");
    await waitConnected(b, 'bob');
  });

  await step("alice sees bob come online (a join event from node 2)", async () => {
    await until('alice lists bob online', async () => (await onlineNames(a)).includes('bob'));
    await until('bob lists himself online', async () => (await onlineNames(b)).includes('bob (you)'));
    await expectText(a.locator('#online-count'), '2', "alice's online count");
  });

  const hello = 'Hello from node 1 👋';
  await step('alice sends (Enter), gets the ack, and bob sees the message', async () => {
    await send(a, hello, 'enter');
    await expectText(a.locator('#send-status'), 'Sent', "alice's send status");
    await messageItem(a, hello).waitFor({ state: 'visible' });
    await messageItem(b, hello).waitFor({ state: 'visible' });
    await expectText(messageItem(b, hello).locator('.author'), 'alice', 'the author bob sees');
    await until("alice's outbox empties", async () => (await a.locator('#outbox li').count()) === 0);
  });

  const reply = 'Hi alice, bob here on node 2';
  await step('bob replies (Send button) and alice sees it', async () => {
    await send(b, reply, 'button');
    await messageItem(a, reply).waitFor({ state: 'visible' });
    await messageItem(b, reply).waitFor({ state: 'visible' });
    // The message list is a live log: bob's reply is read out to alice, her own message is not.
    const heard = await politeness(messageItem(a, reply));
    if (heard !== 'polite') throw new Error(`alice's screen reader would not read bob's reply (aria-live: ${heard})`);
    const own = await politeness(messageItem(a, hello));
    if (own !== 'off') throw new Error(`alice's screen reader would read her own message back (aria-live: ${own})`);
  });

  await step('the room is accessible (names, landmarks, live message list, visible focus)', async () => {
    await checkAccessibility(a, "alice's room", { room: true });
    await checkAccessibility(b, "bob's room", { room: true });
  });

  const edited = 'Hello from node 1 (now with an edit)';
  await step('alice edits her message and bob sees the edit', async () => {
    const seq = await messageItem(a, hello).getAttribute('data-seq');
    const mine = a.locator(`#messages li[data-seq="${seq}"]`);
    await mine.getByRole('button', { name: /^Edit message/ }).click();
    const box = mine.getByLabel('Edit message', { exact: true });
    await box.fill(edited);
    await box.press('Enter');
    await messageItem(a, edited).waitFor({ state: 'visible' });
    await messageItem(b, edited).waitFor({ state: 'visible' });
    await expectText(messageItem(b, edited).locator('.edited'), 'edited', "bob's edited marker");
    if ((await messageItem(b, hello).count()) !== 0) throw new Error('bob still shows the old text');
  });

  const doomed = 'This one will be deleted';
  let doomedSeq = null;
  await step('alice deletes a message and bob sees "message deleted"', async () => {
    await send(a, doomed, 'enter');
    const onB = messageItem(b, doomed);
    await onB.waitFor({ state: 'visible' });
    const seq = await onB.getAttribute('data-seq');
    doomedSeq = seq;
    const mine = messageItem(a, doomed);
    await mine.getByRole('button', { name: /^Delete message/ }).click();
    await mine.getByRole('group', { name: 'Confirm deletion' }).getByRole('button', { name: 'Delete', exact: true }).click();
    const tomb = `#messages li[data-seq="${seq}"]`;
    await expectText(b.locator(tomb), 'message deleted', "bob's tombstone");
    await expectText(a.locator(tomb), 'message deleted', "alice's tombstone");
    if ((await messageItem(b, doomed).count()) !== 0) throw new Error('bob still shows the deleted text');
  });

  await step('screenshot', async () => {
    await mkdir(path.dirname(SCREENSHOT), { recursive: true });
    await a.screenshot({ path: SCREENSHOT, timeout: WAIT_MS });
    log(`saved ${SCREENSHOT}`);
    if (SCREENSHOT_NARROW) {
      await mkdir(path.dirname(SCREENSHOT_NARROW), { recursive: true });
      await b.screenshot({ path: SCREENSHOT_NARROW, timeout: WAIT_MS });
      log(`saved ${SCREENSHOT_NARROW}`);
    }
  });

  // After the screenshot, so that the README's picture shows a tidy room.
  const unbroken = `a-very-long-link-without-spaces-${'x'.repeat(120)}`;
  await step("bob's 390 px window: composer on screen, nothing wider than the window", async () => {
    await send(a, unbroken, 'enter');
    await messageItem(b, unbroken).waitFor({ state: 'visible' });
    await checkNarrowLayout(b, "bob's room", { composer: true });
  });

  const whileAway = 'Sent while alice was reconnecting';
  await step("alice's socket drops; she reconnects with since= and misses nothing", async () => {
    const before = await a.evaluate(() => window.__sockets.length);
    await a.evaluate(() => window.__sockets[window.__sockets.length - 1].close());
    // The first retry comes after about a second; a slow poll may only see the new socket.
    await until('alice shows the reconnecting state', async () =>
      (await a.locator('#conn').getAttribute('data-state')) === 'reconnecting' ||
      (await a.evaluate(() => window.__sockets.length)) > before, 5000);
    await send(b, whileAway, 'button');
    await messageItem(b, whileAway).waitFor({ state: 'visible' });
    await waitConnected(a, 'alice');
    const url = await a.evaluate(() => window.__sockets[window.__sockets.length - 1].url);
    const after = await a.evaluate(() => window.__sockets.length);
    if (after <= before || !/[?&]since=\d+/.test(url)) throw new Error(`reconnect did not ask for since=: ${url}`);
    await messageItem(a, whileAway).waitFor({ state: 'visible' });
    await sleep(300); // a duplicate, if any, would come right behind
    const seqs = await a.locator('#messages li').evaluateAll((lis) => lis.map((li) => Number(li.dataset.seq)));
    if (new Set(seqs).size !== seqs.length) throw new Error(`duplicate seqs on alice's side: ${seqs}`);
    const sorted = [...seqs].sort((x, y) => x - y);
    if (sorted.join() !== seqs.join()) throw new Error(`messages out of order: ${seqs}`);
    if ((await messageItem(a, whileAway).count()) !== 1) throw new Error('the missed message shows more than once');
  });

  await step('scrolling back loads older history (GET ...?before=)', async () => {
    // Sixty more messages, posted over HTTP with alice's token, then a fresh page:
    // the socket's history=50 covers only the newest fifty.
    const total = (await b.locator('#messages li').count()) + 60;
    const posted = await a.evaluate(async (room) => {
      const token = sessionStorage.getItem('roomcast.token');
      let ok = 0;
      for (let i = 0; i < 60; i += 10) {
        const batch = [];
        for (let j = i; j < i + 10; j += 1) {
          batch.push(fetch(`/rooms/${room}/messages`, {
            method: 'POST',
            headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
            body: JSON.stringify({ content: `filler ${String(j).padStart(2, '0')}`, client_id: `filler-${j}` }),
          }).then((r) => r.status === 202 && ok++));
        }
        await Promise.all(batch);
      }
      return ok;
    }, ROOM);
    if (posted !== 60) throw new Error(`only ${posted} of 60 filler messages were accepted`);
    // 202 means the broker has them; bob seeing all of them means they are stored.
    await until(`bob shows all ${total} messages`, async () => (await b.locator('#messages li').count()) >= total);
    await a.reload({ timeout: WAIT_MS });
    await waitConnected(a, 'alice (after reload)');
    await until('alice shows the newest 50 messages (history=50)', async () =>
      (await a.locator('#messages li').count()) === 50);
    const loud = await a.locator('#messages li').evaluateAll((lis) =>
      lis.filter((li) => li.closest('[aria-live]')?.getAttribute('aria-live') !== 'off').map((li) => li.dataset.seq));
    if (loud.length) throw new Error(`history would be read out as new messages: #${loud.join(', #')}`);
    const newest = await a.locator('#messages li').last().getAttribute('data-seq');
    if (Number(newest) !== total) throw new Error(`the newest message after reload is #${newest}, not #${total}`);
    await a.getByRole('button', { name: 'Load older messages' }).waitFor({ state: 'visible' });
    await a.locator('#scroller').evaluate((s) => { s.scrollTop = 0; }); // reaching the top loads more
    await messageItem(a, edited).waitFor({ state: 'visible' });
    await a.locator('#history-start').waitFor({ state: 'visible' });
    const seqs = await a.locator('#messages li').evaluateAll((lis) => lis.map((li) => Number(li.dataset.seq)));
    const expected = Array.from({ length: seqs.length }, (_, i) => i + 1);
    if (seqs.length !== total || seqs.join() !== expected.join()) {
      throw new Error(`history is not 1..${total} once each: ${seqs}`);
    }
    await expectText(a.locator(`#messages li[data-seq="${doomedSeq}"]`), 'message deleted', 'the old tombstone from history');
  });

  await step('bob closes his window and alice sees him leave', async () => {
    await bob.close();
    delete pages.bob;
    await until('alice no longer lists bob online', async () => !(await onlineNames(a)).includes('bob'));
    await expectText(a.locator('#online-count'), '1', "alice's online count");
  });

  if (problems.length) throw new Error(`the page reported errors:\n  ${problems.join('\n  ')}`);
  await alice.close();
  await browser.close();
  clearTimeout(watchdog);
  log(`PASSED in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

main().catch((err) => fail(err && err.stack ? err.stack : String(err)));
