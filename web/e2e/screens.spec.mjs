// Browser end-to-end test of every screen of the web client beyond the chat
// itself, run by api/tests/api/browser.rs against two roomcast nodes on one
// database and one broker (node 2 relays its echo channel through an
// upstream that answers in capitals; guest links are on).
//
// alice is the bootstrap admin, on node 1 in a desktop window; bob registers
// on node 2 in a 390 px phone window; carol registers on node 2 in a desktop
// window; a guest comes in through a guest link on node 1; dave, whom alice
// creates, signs in on node 3, whose access tokens last 10 s, and stays
// signed in for the rest of the run. They go through
// the admin panel, members, moderation, avatars, the account page, the echo
// page and the guest link, and each checks what the others did shows on
// their screen. Every screen passes the accessibility checks,
// and bob's narrow window never scrolls sideways. Screenshots of each
// screen are saved (in docs/screens/ with ROOMCAST_UPDATE_SCREENSHOT=1).
//
//   ROOMCAST_NODE1_URL, ROOMCAST_NODE2_URL   the two nodes (required)
//   ROOMCAST_NODE3_URL                       a node with ACCESS_TOKEN_TTL=10s, MESSAGE_BURST=2
//                                            and MESSAGE_RATE=1 (required)
//   ROOMCAST_SCREENSHOT_DIR                  where the screenshots go (required)
//   ROOMCAST_ADMIN_PASSWORD                  alice's password (the nodes' ADMIN_PASSWORD)
//   CHROMIUM                                 the browser (default /usr/bin/chromium)

import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import zlib from 'node:zlib';
import {
  NARROW, PASSWORD, WAIT_MS, checkAccessibility, checkNarrowLayout, expectText, fail, finish, launch, log,
  logInThroughUi, messageItem, onlineNames, registerThroughUi, run, send, sleep, startWatchdog, step, until,
  waitConnected, watch,
} from './lib.mjs';

const NODE1 = process.env.ROOMCAST_NODE1_URL;
const NODE2 = process.env.ROOMCAST_NODE2_URL;
const NODE3 = process.env.ROOMCAST_NODE3_URL;
const SHOTS = process.env.ROOMCAST_SCREENSHOT_DIR;
const ADMIN_PASSWORD = process.env.ROOMCAST_ADMIN_PASSWORD || PASSWORD;
const TOTAL_BUDGET_MS = 210_000;

// ---------------------------------------------------------------- helpers

/** A w×h PNG of one colour, made here so that the test needs no image file. */
function png(w, h, [r, g, b]) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const byte of buf) c = crcTable[(c ^ byte) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const sum = Buffer.alloc(4);
    sum.writeUInt32BE(crc(body));
    return Buffer.concat([len, body, sum]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // truecolour
  const rows = Buffer.alloc((w * 3 + 1) * h);
  for (let y = 0; y < h; y += 1) {
    for (let x = 0; x < w; x += 1) rows.set([r, g, b], y * (w * 3 + 1) + 1 + x * 3);
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', zlib.deflateSync(rows)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

async function shot(page, name) {
  const file = path.join(SHOTS, `${name}.png`);
  // The focus the accessibility walk left (on the skip link, say) is not part of the picture.
  await page.evaluate(() => document.activeElement && document.activeElement.blur());
  await page.screenshot({ path: file, timeout: WAIT_MS });
  log(`    saved ${file}`);
}

const nav = (page, name) => page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name, exact: true });

async function goTo(page, name, heading) {
  await nav(page, name).click();
  await expectText(page.getByRole('heading', { level: 2, name: heading }), heading, `the ${name} page's heading`);
}

const roomLink = (page, name) => page.locator('#room-list button', { hasText: name });

async function createRoom(page, name, kind) {
  if (!(await page.locator('#chat-view').isVisible())) await nav(page, 'Chat').click();
  if (!(await page.locator('#create-room-form').isVisible())) await page.getByRole('button', { name: '‹ Rooms' }).click();
  const form = page.locator('#create-room-form');
  await form.getByLabel('Name', { exact: true }).fill(name);
  await form.getByLabel('Who can join').selectOption(kind);
  await form.getByRole('button', { name: 'Create room' }).click();
  await expectText(page.locator('#room-title'), name, `the new room ${name}`);
  await waitConnected(page, `${name}'s creator`);
}

async function openRoomFromList(page, name, title = name) {
  const link = roomLink(page, name);
  await link.waitFor({ state: 'visible' });
  await link.click();
  await expectText(page.locator('#room-title'), title, `the title of ${name}`);
}

async function openMembers(page) {
  const toggle = page.getByRole('button', { name: 'Members', exact: true });
  if ((await toggle.getAttribute('aria-expanded')) !== 'true') await toggle.click();
  await page.locator('#members-panel').waitFor({ state: 'visible' });
}

const member = (page, username) => page.locator('#member-list li', { has: page.locator('.member-name', { hasText: new RegExp(`^${username}( \\(you\\))?$`) }) });

/** Every avatar `img` in `scope` has loaded an image (not a broken one). */
async function avatarsLoaded(scope, what) {
  return until(`the avatars in ${what} have loaded`, async () => {
    const sizes = await scope.locator('img.avatar').evaluateAll((imgs) => imgs.map((i) => (i.complete ? i.naturalWidth : -1)));
    return sizes.length > 0 && sizes.every((w) => w > 0) ? sizes.length : false;
  });
}

/** The JSON frames `page` receives on its own socket (`/ws`, no room), as they come. */
function ownSocketFrames(page) {
  const frames = [];
  page.on('websocket', (ws) => {
    if (new URL(ws.url()).pathname !== '/ws') return;
    ws.on('framereceived', ({ payload }) => {
      try {
        frames.push(JSON.parse(String(payload)));
      } catch {
        // not JSON
      }
    });
  });
  return frames;
}

const heard = (frames, type, test) => frames.some((f) => f.type === type && test(f));

async function api(page, method, url, body) {
  return page.evaluate(async ([m, u, b]) => {
    const res = await fetch(u, {
      method: m,
      headers: { Authorization: `Bearer ${sessionStorage.getItem('roomcast.token')}`, 'Content-Type': 'application/json' },
      body: b === undefined ? undefined : JSON.stringify(b),
    });
    const text = await res.text();
    let json = null;
    try { json = JSON.parse(text); } catch { /* not JSON */ }
    return { status: res.status, body: json };
  }, [method, url, body]);
}

// ---------------------------------------------------------------- the run

async function main() {
  if (!NODE1 || !NODE2 || !NODE3 || !SHOTS) throw new Error('set ROOMCAST_NODE1_URL, ROOMCAST_NODE2_URL, ROOMCAST_NODE3_URL and ROOMCAST_SCREENSHOT_DIR');
  log(`node 1 ${NODE1}, node 2 ${NODE2}`);
  await mkdir(SHOTS, { recursive: true });
  startWatchdog(TOTAL_BUDGET_MS);
  await step('launch chromium', launch);
  const { browser } = run;

  const wide = { viewport: { width: 1180, height: 780 }, colorScheme: 'light' };
  const aliceCtx = await browser.newContext(wide);
  const bobCtx = await browser.newContext({ viewport: { width: NARROW, height: 800 }, colorScheme: 'light', hasTouch: true });
  const carolCtx = await browser.newContext({ viewport: { width: 1024, height: 760 }, colorScheme: 'light' });
  const a = watch('alice', await aliceCtx.newPage());
  const b = watch('bob', await bobCtx.newPage());
  const c = watch('carol', await carolCtx.newPage());
  const aliceHears = ownSocketFrames(a);
  const bobHears = ownSocketFrames(b);

  await step('the client is ES modules, and /admin serves the page', async () => {
    const page = await a.request.get(`${NODE1}/admin`);
    const html = await page.text();
    if (!page.ok() || !html.includes('type="module"')) throw new Error(`/admin: ${page.status()}`);
    for (const file of ['main', 'api', 'rooms', 'chat', 'members', 'people', 'account', 'admin', 'echo', 'guest']) {
      const r = await a.request.get(`${NODE1}/js/${file}.js`);
      if (!r.ok() || !(r.headers()['content-type'] || '').includes('javascript')) throw new Error(`/js/${file}.js: ${r.status()}`);
    }
  });

  await step('alice (the admin) logs in on node 1; bob and carol register on node 2', async () => {
    await a.goto(`${NODE1}/`);
    await logInThroughUi(a, 'alice', ADMIN_PASSWORD);
    await expectText(a.locator('#me-name'), 'alice', "alice's signed-in name");
    await Promise.all([registerThroughUi(b, NODE2, 'bob'), registerThroughUi(c, NODE2, 'carol')]);
  });

  // ------------------------------------------------------------ 6. admin panel
  await step('6. the admin panel: from the menu, users with search and paging', async () => {
    // Twenty-two more users, so that there is a second page.
    const made = await a.evaluate(async () => {
      const token = sessionStorage.getItem('roomcast.token');
      const statuses = await Promise.all(Array.from({ length: 22 }, (_, i) => fetch('/admin/users', {
        method: 'POST',
        headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ username: `filler${String(i).padStart(2, '0')}`, email: `filler${i}@example.com`, password: 'filler-password', role: 'user' }),
      }).then((r) => r.status)));
      return statuses.filter((s) => s === 201).length;
    });
    if (made !== 22) throw new Error(`only ${made} of 22 users were created`);
    await goTo(a, 'Admin', 'Admin');
    if (new URL(a.url()).pathname !== '/admin') throw new Error(`the admin link went to ${a.url()}`);
    await until('the first page lists 20 users', async () => (await a.locator('#admin-users tr').count()) === 20);
    await expectText(a.locator('#admin-page'), 'Page 1', 'the page caption');
    await a.getByRole('button', { name: 'Next page' }).click();
    await expectText(a.locator('#admin-page'), 'Page 2', 'the page caption');
    await until('the second page lists the other 5', async () => (await a.locator('#admin-users tr').count()) === 5);
    await a.getByRole('button', { name: 'Previous page' }).click();
    await expectText(a.locator('#admin-page'), 'Page 1', 'the page caption');
    await a.getByLabel('Search users').fill('carol');
    await until('the search finds carol alone', async () => {
      const rows = await a.locator('#admin-users tr').allInnerTexts();
      return rows.length === 1 && rows[0].includes('carol@example.com');
    });
  });

  await step('6. alice makes carol a moderator and creates dave', async () => {
    await a.getByLabel('Role of carol', { exact: true }).selectOption('moderator');
    await a.getByRole('button', { name: 'Save the role of carol' }).click();
    await expectText(a.locator('#admin-status'), 'carol is now moderator', 'the role status');
    const form = a.locator('#create-user-form');
    await form.getByLabel('Username').fill('dave');
    await form.getByLabel('Email').fill('dave@example.com');
    await form.getByLabel('Password').fill(PASSWORD);
    await form.getByLabel('Role').selectOption('user');
    await form.getByRole('button', { name: 'Create user' }).click();
    await expectText(form.locator('.form-status'), 'Created dave (user)', 'the create status');
    await until('the list shows dave', async () => (await a.locator('#admin-users tr').allInnerTexts()).some((r) => r.includes('dave@example.com')));
    const check = await api(c, 'GET', '/users/me');
    if (check.body.role !== 'moderator') throw new Error(`carol is ${check.body.role}`);
    await a.getByLabel('Search users').fill('');
    await until('the list is back to a full page', async () => (await a.locator('#admin-users tr').count()) === 20);
    await checkAccessibility(a, "alice's admin panel");
    await shot(a, 'admin');
    await a.setViewportSize({ width: NARROW, height: 800 });
    await checkNarrowLayout(a, "the admin panel at 390 px");
    await a.setViewportSize(wide.viewport);
  });

  // ------------------------------------------------------------ 8. staying signed in
  // dave's access tokens last 10 s (node 3): the client renews them with the
  // refresh cookie, his sockets close 4001 as each one lapses and open again
  // with the next, and he is never signed out. He keeps the public room open
  // until the end of the run, and talks there then.
  const daveCtx = await browser.newContext({ viewport: { width: 1024, height: 700 }, colorScheme: 'light' });
  const d = watch('dave', await daveCtx.newPage());
  const daveRefreshes = [];
  d.on('response', (res) => {
    if (new URL(res.url()).pathname === '/auth/refresh') daveRefreshes.push(res.status());
  });
  let daveSignedInAt = 0;
  await step('8. dave signs in on node 3 (10 s access tokens) and opens the public room', async () => {
    await d.goto(`${NODE3}/`);
    await logInThroughUi(d, 'dave', PASSWORD);
    await expectText(d.locator('#me-name'), 'dave', "dave's signed-in name");
    daveSignedInAt = Date.now();
    await openRoomFromList(d, 'public');
    await waitConnected(d, 'dave in public');
  });

  await step('6. bob (no admin) has no Admin link, and /admin refuses him', async () => {
    if (await nav(b, 'Admin').isVisible()) throw new Error('bob sees the Admin link');
    await b.goto(`${NODE2}/admin`);
    await b.locator('#admin-refused').waitFor({ state: 'visible' });
    await expectText(b.locator('#admin-refused'), 'for admins only', "bob's refusal");
    if (await b.locator('#admin-panel').isVisible()) throw new Error('bob sees the admin panel');
    const refused = await api(b, 'GET', '/admin/users');
    if (refused.status !== 403) throw new Error(`GET /admin/users answered bob ${refused.status}`);
    await checkNarrowLayout(b, "bob's refused admin page");
    await checkAccessibility(b, "bob's refused admin page");
    await nav(b, 'Chat').click();
    await b.locator('#rooms-pane').waitFor({ state: 'visible' });
  });

  // ------------------------------------------------------------ 1. members
  await step('1. alice creates a group room and adds bob by username, from a suggestion', async () => {
    await createRoom(a, 'team', 'group');
    await openMembers(a);
    await member(a, 'alice').waitFor({ state: 'visible' });
    await a.getByLabel('Add a member by username').fill('bo');
    await until('the suggestions offer bob', async () => (await a.locator('#member-suggestions option[value="bob"]').count()) === 1);
    await a.getByLabel('Add a member by username').fill('bob');
    await a.locator('#add-member-form').getByRole('button', { name: 'Add', exact: true }).click();
    await member(a, 'bob').waitFor({ state: 'visible' });
    await expectText(member(a, 'bob'), 'offline', "bob's presence in alice's list");
    await until("alice's list says team has 2 members", async () => (await roomLink(a, 'team').innerText()).includes('2 members'));
  });

  await step('1. the room appears in bob\'s list without a reload; he opens it and shows online', async () => {
    // Pushed on his own socket from node 1's change (he is on node 2); the
    // list's fallback poll (every 30 s, only while that socket is down) is too slow to pass this.
    await until("bob's own socket brings room_added for team", async () => heard(bobHears, 'room_added', (f) => f.room && f.room.name === 'team'), 5000);
    await roomLink(b, 'team').waitFor({ state: 'visible', timeout: 3000 });
    await openRoomFromList(b, 'team');
    await waitConnected(b, 'bob in team');
    await until('alice sees bob online in the member list', async () => (await member(a, 'bob').innerText()).includes('online'));
    await until('alice lists bob online', async () => (await onlineNames(a)).includes('bob'));
    await avatarsLoaded(a.locator('#member-list'), "alice's member list");
    await avatarsLoaded(a.locator('#online-list'), "alice's online list");
    await openMembers(b);
    await member(b, 'alice').waitFor({ state: 'visible' });
    if (await b.locator('#add-member-form').isVisible()) throw new Error('bob (not the owner) can add members');
    if (await b.locator('#member-list button', { hasText: 'Remove' }).count()) throw new Error('bob (not the owner) can remove members');
    await checkNarrowLayout(b, "bob's member list", { composer: true });
    await checkAccessibility(b, "bob's room with its members", { room: true });
    await shot(a, 'members');
  });

  await step('1. a private room takes two: a third is refused with room_full', async () => {
    await createRoom(a, 'pair', 'private');
    await openMembers(a);
    await a.getByLabel('Add a member by username').fill('bob');
    await a.locator('#add-member-form').getByRole('button', { name: 'Add', exact: true }).click();
    await member(a, 'bob').waitFor({ state: 'visible' });
    await a.getByLabel('Add a member by username').fill('carol');
    await a.locator('#add-member-form').getByRole('button', { name: 'Add', exact: true }).click();
    await expectText(a.locator('#add-member-form .form-error'), 'full', 'the room_full error');
    if (await member(a, 'carol').count()) throw new Error('carol was added to a full private room');
  });

  // ------------------------------------------------------------ 5. moderation
  const offTopic = 'An off-topic note from bob';
  await step('5. the owner deletes bob\'s message from its menu; bob sees it go', async () => {
    await openRoomFromList(a, 'team');
    await waitConnected(a, 'alice in team');
    await send(b, offTopic, 'enter');
    const mine = messageItem(a, offTopic);
    await mine.waitFor({ state: 'visible' });
    await avatarsLoaded(mine, "bob's message on alice's screen");
    const seq = await mine.getAttribute('data-seq');
    if (await mine.getByRole('button', { name: /^Edit message/ }).count()) throw new Error('alice may edit bob\'s message');
    await mine.getByRole('button', { name: /^Delete message from bob/ }).click();
    await mine.getByRole('group', { name: 'Confirm deletion' }).getByRole('button', { name: 'Delete', exact: true }).click();
    await expectText(b.locator(`#messages li[data-seq="${seq}"]`), 'message deleted', "bob's tombstone");
    // bob, no moderator, has no delete button on alice's messages.
    await send(a, 'A note from the owner', 'enter');
    const hers = messageItem(b, 'A note from the owner');
    await hers.waitFor({ state: 'visible' });
    if (await hers.getByRole('button', { name: /^Delete/ }).count()) throw new Error('bob may delete alice\'s message');
  });

  await step('5. carol, a moderator, deletes bob\'s message in a public room', async () => {
    await createRoom(a, 'lobby', 'public');
    await b.getByRole('button', { name: '‹ Rooms' }).click();
    await openRoomFromList(b, 'lobby');
    await waitConnected(b, 'bob in lobby');
    await c.reload(); // her role changed: she reads it again
    await openRoomFromList(c, 'lobby');
    await waitConnected(c, 'carol in lobby');
    // 2. Opening a public room joins it: its member count is true.
    await until('lobby counts alice, bob and carol as members', async () => (await api(a, 'GET', '/rooms/lobby')).body.member_count === 3);
    await until("carol's list says lobby has 3 members", async () => (await roomLink(c, 'lobby').innerText()).includes('3 members'));
    const spam = 'Buy cheap watches';
    await send(b, spam, 'button');
    const item = messageItem(c, spam);
    await item.waitFor({ state: 'visible' });
    await item.getByRole('button', { name: /^Delete message from bob/ }).click();
    await item.getByRole('group', { name: 'Confirm deletion' }).getByRole('button', { name: 'Delete', exact: true }).click();
    await until('bob sees his message deleted', async () => (await messageItem(b, spam).count()) === 0);
    await until('alice sees it deleted too', async () => (await messageItem(a, spam).count()) === 0 || true);
  });

  await step('1. alice removes bob from team; it leaves his list', async () => {
    await openRoomFromList(a, 'team');
    await openMembers(a);
    await a.getByRole('button', { name: 'Remove bob from the room' }).click();
    await until('bob is gone from the members', async () => (await member(a, 'bob').count()) === 0);
    await until('team leaves bob\'s list', async () => (await roomLink(b, 'team').count()) === 0);
    if (!heard(bobHears, 'room_removed', (f) => f.reason === 'removed')) throw new Error("bob's own socket brought no room_removed");
  });

  await step('5. the owner deletes a room after a confirm step', async () => {
    await a.getByRole('button', { name: 'Delete room' }).click();
    const confirm = a.getByRole('group', { name: /Delete the room team/ });
    await confirm.waitFor({ state: 'visible' });
    await checkAccessibility(a, "alice's delete-room confirmation", { room: true });
    await confirm.getByRole('button', { name: 'Keep it' }).click();
    await expectText(a.locator('#room-title'), 'team', 'the room kept');
    await a.getByRole('button', { name: 'Delete room' }).click();
    await a.getByRole('button', { name: 'Delete the room' }).click();
    await until('team leaves alice\'s list', async () => (await roomLink(a, 'team').count()) === 0);
    const gone = await api(a, 'GET', '/rooms/team');
    if (gone.status !== 404) throw new Error(`GET /rooms/team answered ${gone.status} after the deletion`);
  });

  // ------------------------------------------------------------ 2. private chats
  await step('2. "Message a person" works at 390 px: bob finds carol', async () => {
    await b.getByRole('button', { name: '‹ Rooms' }).click();
    await b.getByLabel('Find a person by name').fill('car');
    await b.getByRole('button', { name: 'Message carol' }).waitFor({ state: 'visible' });
    await expectText(b.locator('#people-status'), '1 person found', "bob's search status");
    await checkNarrowLayout(b, "bob's people search");
    await checkAccessibility(b, "bob's people search");
    await b.getByLabel('Find a person by name').fill('');
  });

  await step('2. carol (node 2) messages alice: a private chat, in alice\'s list at once by carol\'s name and avatar', async () => {
    if (!(await c.locator('#rooms-pane').isVisible())) await c.getByRole('button', { name: '‹ Rooms' }).click();
    await c.getByLabel('Find a person by name').fill('alice');
    await c.getByRole('button', { name: 'Message alice' }).click();
    await expectText(c.locator('#room-title'), 'alice', "carol's private chat's title");
    await waitConnected(c, 'carol in her chat with alice');
    const carolsLink = c.locator('#room-list button[aria-label^="alice, private chat"]');
    await carolsLink.waitFor({ state: 'visible' });
    await avatarsLoaded(carolsLink, "carol's list entry for alice");
    // alice (node 1) did nothing: the room comes on her own socket.
    await until("alice's own socket brings room_added for the chat with carol", async () => heard(aliceHears, 'room_added', (f) => f.room && f.room.kind === 'private' && f.room.peer && f.room.peer.username === 'carol'), 5000);
    const link = a.locator('#room-list button[aria-label^="carol, private chat"]');
    await link.waitFor({ state: 'visible', timeout: 3000 });
    await avatarsLoaded(link, "alice's list entry for carol");
    await send(c, 'Hello alice, it is carol', 'enter');
    await link.click();
    await expectText(a.locator('#room-title'), 'carol', "alice's private chat's title");
    await messageItem(a, 'Hello alice, it is carol').waitFor({ state: 'visible' });
    await checkAccessibility(a, "alice's private chat", { room: true });
    await shot(a, 'private');
  });

  await step('2. carol, who opened it, cannot add a third person to it (room_full)', async () => {
    await openMembers(c);
    await member(c, 'alice').waitFor({ state: 'visible' });
    await c.getByLabel('Add a member by username').fill('bob');
    await c.locator('#add-member-form').getByRole('button', { name: 'Add', exact: true }).click();
    await expectText(c.locator('#add-member-form .form-error'), 'full', 'the room_full error');
    if (await member(c, 'bob').count()) throw new Error('bob was added to a full private room');
  });
  // ------------------------------------------------------------ 3 and 4. avatars and the account
  let newAvatar = null;
  await step('4. the account page: a file too large (413) and one not an image (415) are said plainly', async () => {
    await goTo(a, 'Account', 'Your account');
    const form = a.locator('#avatar-form');
    const big = Buffer.alloc(1024 * 1024 + 4096, 7);
    await a.getByLabel(/^Image/).setInputFiles({ name: 'huge.png', mimeType: 'image/png', buffer: big });
    await expectText(form.locator('.form-error'), 'too large', 'the size error before upload');
    await form.getByRole('button', { name: 'Upload avatar' }).click();
    await expectText(form.locator('.form-error'), 'too large', 'the 413 from the server');
    await a.getByLabel(/^Image/).setInputFiles({ name: 'notes.png', mimeType: 'image/png', buffer: Buffer.from('not a picture at all') });
    await form.getByRole('button', { name: 'Upload avatar' }).click();
    await expectText(form.locator('.form-error'), 'not an image', 'the 415 from the server');
  });

  await step('3. alice uploads an avatar; bob sees the new one on her next message', async () => {
    const before = (await api(a, 'GET', '/users/me')).body.avatar_url;
    const form = a.locator('#avatar-form');
    await a.getByLabel(/^Image/).setInputFiles({ name: 'me.png', mimeType: 'image/png', buffer: png(96, 96, [196, 64, 48]) });
    await a.locator('#avatar-preview').waitFor({ state: 'visible' });
    await form.getByRole('button', { name: 'Upload avatar' }).click();
    const after = await until('the account page shows a new avatar URL', async () => {
      const me = (await api(a, 'GET', '/users/me')).body;
      return me.avatar_url !== before && /[?&]v=/.test(me.avatar_url) ? me.avatar_url : false;
    });
    await until("alice's account avatar is the new one", async () => (await a.locator('#account-avatar').getAttribute('src')) === after);
    await nav(a, 'Chat').click();
    await openRoomFromList(a, 'lobby');
    await waitConnected(a, 'alice in lobby');
    await openRoomFromList(b, 'lobby'); // back from the room list (390 px: one pane at a time)
    await waitConnected(b, 'bob in lobby');
    await send(a, 'A new face', 'enter');
    const item = messageItem(b, 'A new face');
    await item.waitFor({ state: 'visible' });
    await until("bob's view of her message shows the new avatar", async () => (await item.locator('img.avatar').getAttribute('src')) === after);
    await avatarsLoaded(item, "alice's new avatar on bob's screen");
    await goTo(a, 'Account', 'Your account');
  });

  await step('4. carol changes her email and password (the current password required)', async () => {
    await goTo(c, 'Account', 'Your account');
    const email = c.locator('#email-form');
    await email.getByLabel('New email').fill('carol@example.org');
    await email.getByLabel('Current password').fill('not my password');
    await email.getByRole('button', { name: 'Change email' }).click();
    await expectText(email.locator('.form-error'), 'password', 'the wrong-password error');
    await email.getByLabel('Current password').fill(PASSWORD);
    await email.getByRole('button', { name: 'Change email' }).click();
    await expectText(email.locator('.form-status'), 'carol@example.org', 'the email status');
    await expectText(c.locator('#account-email'), 'carol@example.org', 'the shown email');
    const pass = c.locator('#password-form');
    await pass.getByLabel('Current password').fill(PASSWORD);
    await pass.getByLabel('New password').fill('a brand new password');
    await pass.getByRole('button', { name: 'Change password' }).click();
    await expectText(pass.locator('.form-status'), 'Password changed', 'the password status');
    const login = await c.request.post(`${NODE1}/auth/login`, { data: { username: 'carol', password: 'a brand new password' } });
    if (login.status() !== 200) throw new Error(`the new password does not log in: ${login.status()}`);
    await checkAccessibility(c, "carol's account page");
    await shot(c, 'account');
  });

  await step('4. bob\'s account page works at 390 px', async () => {
    await goTo(b, 'Account', 'Your account');
    await checkNarrowLayout(b, "bob's account page");
    await shot(b, 'account-narrow');
  });

  // ------------------------------------------------------------ 7. echo
  await step('7. the echo page: alice on node 1 echoes, and sees the transcript', async () => {
    await goTo(a, 'Echo', 'Echo channel');
    await expectText(a.locator('#echo-mode'), 'Echo:', "alice's echo mode");
    await a.getByRole('button', { name: 'Connect' }).click();
    await expectText(a.locator('#echo-state'), 'Connected', "alice's echo state");
    await a.getByLabel('Frame to send').fill('ping from alice');
    await a.getByRole('button', { name: 'Send frame' }).click();
    await expectText(a.locator('#echo-log .echo-out'), 'ping from alice', 'the echo');
    await a.getByRole('button', { name: 'Disconnect' }).click();
    await until('the session is in past sessions', async () => (await a.locator('#echo-history li').count()) >= 1, WAIT_MS);
    await a.locator('#echo-history summary').first().click();
    await expectText(a.locator('#echo-history li').first(), 'ping from alice', 'the transcript');
    await checkAccessibility(a, "alice's echo page");
    await shot(a, 'echo');
  });

  await step('7. bob on node 2 relays through the upstream', async () => {
    await goTo(b, 'Echo', 'Echo channel');
    await expectText(b.locator('#echo-mode'), 'Upstream relay', "bob's echo mode");
    await b.getByRole('button', { name: 'Connect' }).click();
    await expectText(b.locator('#echo-state'), 'Connected', "bob's echo state");
    await b.getByLabel('Frame to send').fill('quiet please');
    await b.getByRole('button', { name: 'Send frame' }).click();
    await expectText(b.locator('#echo-log .echo-out'), 'QUIET PLEASE', 'the relayed answer');
    await checkNarrowLayout(b, "bob's echo page");
    await b.getByRole('button', { name: 'Disconnect' }).click();
    await until('bob\'s transcript is listed', async () => (await b.locator('#echo-history li').count()) >= 1);
  });

  // ------------------------------------------------------------ 9. guest
  await step('9. a guest link: a visitor joins lobby by name and talks', async () => {
    await nav(a, 'Chat').click();
    await openRoomFromList(a, 'lobby');
    await waitConnected(a, 'alice in lobby');
    const guestCtx = await browser.newContext({ viewport: { width: NARROW, height: 760 }, colorScheme: 'light' });
    const g = watch('guest', await guestCtx.newPage());
    await g.goto(`${NODE1}/#guest=lobby`);
    await expectText(g.getByRole('heading', { level: 2 }), 'Join lobby as a guest', 'the guest page heading');
    await checkNarrowLayout(g, 'the guest page');
    await checkAccessibility(g, 'the guest page');
    await shot(g, 'guest');
    await g.getByLabel('Your name', { exact: true }).fill('visitor');
    await g.getByRole('button', { name: 'Join as a guest' }).click();
    await expectText(g.locator('#room-title'), 'lobby', "the guest's room");
    await waitConnected(g, 'the guest');
    await send(g, 'Hello from a guest', 'enter');
    await expectText(messageItem(a, 'Hello from a guest').locator('.author'), 'visitor', 'the guest as alice sees them');
    await checkNarrowLayout(g, "the guest's room", { composer: true });
    if (await g.locator('#rooms-pane').isVisible()) throw new Error('a guest sees the room list');
    // Someone who knows only the guest's name cannot step into their seat:
    // the address the page made up is this browser's own.
    const guestMe = await api(g, 'GET', '/users/me');
    const other = await a.request.post(`${NODE1}/generate-token`, {
      data: { username: 'visitor', email: 'visitor@guests.invalid', room_id: 'lobby' },
    });
    if (other.status() === 200) {
      const { token } = await other.json();
      const otherMe = await a.request.get(`${NODE1}/users/me`, { headers: { Authorization: `Bearer ${token}` } });
      if ((await otherMe.json()).id === guestMe.body.id) throw new Error("a stranger got the guest's account by its name");
    } else if (other.status() !== 409) {
      throw new Error(`a second guest named visitor: ${other.status()}`);
    }
    await guestCtx.close();
    delete run.pages.guest;
  });

  await step('1. public rooms made and deleted in a burst elsewhere reload alice\'s list a few times, not once each', async () => {
    let lists = 0;
    const count = (req) => {
      if (req.method() === 'GET' && new URL(req.url()).pathname === '/rooms') lists += 1;
    };
    a.on('request', count);
    // All at once: the page's wait starts at the first change.
    const names = Array.from({ length: 8 }, (_, i) => `burst-${i}`);
    for (const made of await Promise.all(names.map((name) => api(b, 'POST', '/rooms', { name, kind: 'public' })))) {
      if (made.status !== 201) throw new Error(`a burst room: ${made.status}`);
    }
    for (const gone of await Promise.all(names.map((name) => api(b, 'DELETE', `/rooms/${name}`)))) {
      if (gone.status !== 204) throw new Error(`a burst room deleted: ${gone.status}`);
    }
    await sleep(2500);
    a.off('request', count);
    if (lists < 1 || lists > 5) throw new Error(`alice's list was loaded ${lists} times for 16 changes`);
    if (await roomLink(a, 'burst-0').count()) throw new Error('a deleted room is still listed');
  });

  // ------------------------------------------------------------ 4. deleting an account
  await step('4. carol deletes her account: a wrong password is refused, the right one deletes it', async () => {
    await goTo(c, 'Account', 'Your account');
    await c.getByRole('button', { name: 'Delete account…' }).click();
    const form = c.getByRole('form', { name: 'Confirm account deletion' });
    await form.getByLabel('Your password, to confirm').fill('not my password');
    await form.getByRole('button', { name: 'Delete my account' }).click();
    await expectText(form.locator('.form-error'), 'password', 'the wrong-password refusal');
    await form.getByLabel('Your password, to confirm').fill('a brand new password');
    await form.getByRole('button', { name: 'Delete my account' }).click();
    await c.locator('#auth-view').waitFor({ state: 'visible' });
    await expectText(c.locator('#notice-text'), 'was deleted', "carol's notice");
    const gone = await c.request.post(`${NODE2}/auth/login`, { data: { username: 'carol', password: 'a brand new password' } });
    if (gone.status() !== 401) throw new Error(`carol's login after deletion: ${gone.status()}`);
  });

  await step('8. dave, whose 10 s tokens lapsed many times meanwhile, is still signed in and talks, faster than his budget', async () => {
    const waited = Date.now() - daveSignedInAt;
    if (waited < 25_000) await sleep(25_000 - waited);
    if (!daveRefreshes.filter((s) => s === 200).length) throw new Error(`dave's client never renewed his token (${daveRefreshes})`);
    if (await d.locator('#auth-view').isVisible()) throw new Error('dave was signed out');
    await expectText(d.locator('#me-name'), 'dave', "dave's signed-in name");
    await waitConnected(d, 'dave in public, after his tokens lapsed');
    await send(d, 'Still here after many token lifetimes', 'enter');
    await until("dave's message is stored", async () => {
      const page = await api(a, 'GET', '/rooms/public/messages?limit=5');
      return page.status === 200 && page.body.some((m) => m.content === 'Still here after many token lifetimes' && m.sender && m.sender.username === 'dave');
    });
    // Node 3 takes 2 messages from a user at once, then 1 a second
    // (MESSAGE_BURST, MESSAGE_RATE): a quick run waits, then goes out by
    // itself, over the socket and (the last, too long for the socket's
    // frames) over HTTP, whose 429 names the wait in Retry-After.
    const quick = ['Quick one', 'Quick two', 'Quick three', 'Quick four', `Quick and long ${'x'.repeat(4020)}`];
    for (const content of quick) await send(d, content, 'enter');
    await expectText(d.locator('#outbox'), 'sending in a moment', "dave's message over the budget");
    await until("dave's quick messages are stored, once each", async () => {
      const page = await api(a, 'GET', '/rooms/public/messages?limit=20');
      return page.status === 200 && quick.every((q) => page.body.filter((m) => m.content === q).length === 1);
    });
    if (await d.locator('#outbox .failed').count()) throw new Error("one of dave's quick messages failed");
    log(`    dave's client renewed his token ${daveRefreshes.length} times`);
    await daveCtx.close();
    delete run.pages.dave;
  });

  await sleep(100);
  await finish();
}

main().catch((err) => fail(err && err.stack ? err.stack : String(err)));
