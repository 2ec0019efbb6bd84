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
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  NARROW, WAIT_MS, checkAccessibility, checkNarrowLayout, expectText, fail, finish, launch, log, logInThroughUi,
  messageItem, onlineNames, politeness, registerThroughUi, run, send, sleep, startWatchdog, step, until,
  waitConnected, watch, PASSWORD,
} from './lib.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const NODE1 = process.env.ROOMCAST_NODE1_URL;
const NODE2 = process.env.ROOMCAST_NODE2_URL;
const SCREENSHOT = process.env.ROOMCAST_SCREENSHOT || (process.env.ROOMCAST_UPDATE_SCREENSHOT === '1'
  ? path.join(here, '..', '..', 'docs', 'screenshot.png')
  : path.join(here, '..', '..', 'target', 'e2e', 'screenshot.png'));
const SCREENSHOT_NARROW = process.env.ROOMCAST_SCREENSHOT_NARROW || '';
const TOTAL_BUDGET_MS = 60_000;
const ROOM = 'launch-plan';

async function main() {
  if (!NODE1 || !NODE2) throw new Error('set ROOMCAST_NODE1_URL and ROOMCAST_NODE2_URL');
  log(`node 1 ${NODE1}, node 2 ${NODE2}`);

  startWatchdog(TOTAL_BUDGET_MS);
  await step('launch chromium', launch);
  const { browser } = run;
  const pages = run.pages;

  const alice = await browser.newContext({ viewport: { width: 1180, height: 760 }, colorScheme: 'light' });
  const bob = await browser.newContext({ viewport: { width: NARROW, height: 780 }, colorScheme: 'light', hasTouch: true });
  // Test instrumentation only: keep Alice's sockets in reach so that one can be cut.
  await alice.addInitScript(() => {
    const Native = window.WebSocket;
    window.__sockets = [];
    window.WebSocket = class extends Native {
      constructor(...args) {
        super(...args);
        // Room sockets only (`/ws/<room>`), not the per-user channel (`/ws`).
        if (/\/ws\/[^?]/.test(String(args[0]))) window.__sockets.push(this);
      }
    };
  });
  const a = watch('alice', await alice.newPage());
  const b = watch('bob', await bob.newPage());

  await step('the page is served with a strict Content-Security-Policy', async () => {
    const res = await a.request.get(`${NODE1}/`);
    const csp = res.headers()['content-security-policy'] || '';
    if (!/default-src 'none'|default-src 'self'/.test(csp)) throw new Error(`no strict CSP on /: "${csp}"`);
    if (/https?:/.test(csp.replace(/connect-src[^;]*/, ''))) throw new Error(`CSP names outside hosts: "${csp}"`);
    for (const [file, type] of [['/js/main.js', 'javascript'], ['/js/chat.js', 'javascript'], ['/style.css', 'text/css']]) {
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

  await alice.close();
  await finish();
}

main().catch((err) => fail(err && err.stack ? err.stack : String(err)));
