// One room's conversation: its socket, the message list, sending, editing,
// deleting (the author, or a moderator: the room's owner, a moderator or an
// admin), the online list and scrolling back.
//
// A room is one WebSocket, `/ws/<room>`: the first connection asks for
// `history`, every reconnection for `since=<the last seq seen>`, so nothing
// is missed and nothing is shown twice (messages are keyed by seq).

import { api, isGuest, state } from './api.js';
import { $, announce, avatar, el, formatTime, setConn, showNotice, utf8Bytes, uuid } from './dom.js';
import { refreshRooms } from './rooms.js';
import { memberPresenceChanged } from './members.js';
import { signedOut } from './auth.js';

const HISTORY_PAGE = 50;
const BACKOFF_BASE_MS = 1000;
const BACKOFF_MAX_MS = 30000;
const PING_EVERY_MS = 25000;
const ACK_TIMEOUT_MS = 15000;
// Between two waiting messages' resends: a little over one message's share
// of the default budget (10 a second).
const RETRY_SPACING_MS = 120;
// Content bigger than this goes over HTTP, which answers a clear 413, rather
// than over the socket, where it would only get an error frame.
const SOCKET_CONTENT_BYTES = 4000;

export class RoomSession {
  constructor(room) {
    this.room = room;
    this.ws = null;
    this.welcomed = false;
    this.connectedOnce = false;
    this.closed = false;
    this.attempt = 0;
    this.reconnectTimer = null;
    this.pingTimer = null;
    this.awaitingPong = false;
    this.lastSeq = 0; // highest seq seen: `since` on reconnect
    this.oldestSeq = null; // lowest seq shown: `before` for history
    this.noOlder = false;
    this.loadingOlder = false;
    this.followReplay = true;
    this.messages = new Map(); // seq -> {view, node}
    this.online = new Map(); // user id -> {user, sockets}
    this.pending = new Map(); // client_id -> {content, node, timer, state}
  }

  url() {
    // The login cookie authenticates the socket (same origin): a token in the
    // URL would end up in proxy and server logs. A guest has no cookie (a
    // guest token comes in a body), so a guest's socket carries its token.
    const params = new URLSearchParams();
    if (isGuest() && state.token) params.set('token', state.token);
    if (this.connectedOnce) params.set('since', String(this.lastSeq));
    else params.set('history', String(HISTORY_PAGE));
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${scheme}//${location.host}/ws/${encodeURIComponent(this.room.id)}?${params}`;
  }

  connect() {
    if (this.closed) return;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    setConn('connecting', this.attempt ? `Reconnecting… (attempt ${this.attempt + 1})` : 'Connecting…');
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    this.welcomed = false;
    let opened = false;
    ws.onopen = () => {
      opened = true;
    };
    ws.onmessage = (event) => {
      if (ws === this.ws) this.onFrame(event.data);
    };
    ws.onclose = (event) => {
      if (ws === this.ws) this.onClose(event, opened);
    };
  }

  close() {
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    clearInterval(this.pingTimer);
    for (const p of this.pending.values()) clearTimeout(p.timer);
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, 'left the room');
  }

  send(frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN && this.welcomed) {
      this.ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  // ---- lifecycle

  async onClose(event, opened) {
    this.ws = null;
    this.welcomed = false;
    clearInterval(this.pingTimer);
    if (this.closed) return;
    switch (event.code) {
      case 4001:
        // The token expired under the socket: renew it and carry on, or sign out.
        try {
          await api('GET', '/users/me');
        } catch {
          if (!state.token) return;
          signedOut('your session expired');
          return;
        }
        break;
      case 4403:
        this.stop('Removed from this room', 'You were removed from this room.');
        refreshRooms();
        return;
      case 4404:
        this.stop('Room deleted', `The room “${this.room.name}” was deleted.`);
        refreshRooms();
        return;
      case 1009:
        // The server refuses frames this big: the messages in flight fail, the rest go on.
        for (const p of this.pending.values()) {
          if (p.state === 'sending') this.failPending(p, 'the message is too large');
        }
        break;
      default:
        break;
    }
    if (!opened) {
      // Refused before the upgrade: a browser hides that HTTP answer, so ask over HTTP why.
      try {
        await api('GET', `/rooms/${encodeURIComponent(this.room.id)}`);
      } catch (err) {
        if (this.closed) return;
        if (err.status === 403 || err.status === 404) {
          this.stop('Not connected', `Cannot open this room: ${err.message}`);
          return;
        }
        if (err.status === 401) return; // signed out already
      }
    }
    // "Reconnect now" may have been pressed meanwhile.
    if (!this.closed && !this.ws) this.scheduleReconnect();
  }

  stop(status, why) {
    this.close();
    setConn('closed', status);
    showNotice(why);
    $('message-input').disabled = true;
    $('send-button').disabled = true;
  }

  scheduleReconnect() {
    const delay = Math.round(
      Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** this.attempt) * (0.8 + Math.random() * 0.4),
    );
    this.attempt += 1;
    const offline = navigator.onLine === false;
    setConn(
      'reconnecting',
      offline ? 'Offline — waiting for the network' : `Disconnected — reconnecting in ${Math.ceil(delay / 1000)} s`,
    );
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => this.connect(), delay);
  }

  reconnectNow() {
    if (this.closed || this.ws) return;
    this.connect();
  }

  startPings() {
    clearInterval(this.pingTimer);
    this.awaitingPong = false;
    this.pingTimer = setInterval(() => {
      const ws = this.ws;
      if (!ws) return;
      if (this.awaitingPong) {
        // No answer to the last ping: the connection is dead though nobody closed it.
        this.ws = null;
        ws.onclose = null;
        ws.close();
        this.onClose({ code: 1006 }, true);
        return;
      }
      this.awaitingPong = this.send({ type: 'ping' });
    }, PING_EVERY_MS);
  }

  // ---- frames

  onFrame(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    switch (frame.type) {
      case 'welcome':
        this.onWelcome(frame);
        break;
      case 'message':
        this.upsert(frame, { live: !frame.replay });
        break;
      case 'message_edited':
      case 'message_deleted':
        this.upsert(frame, { update: true });
        break;
      case 'join':
        this.presence(frame.user, +1);
        break;
      case 'leave':
        this.presence(frame.user, -1);
        break;
      case 'presence':
        this.onPresence(frame);
        break;
      case 'ack':
        this.onAck(frame);
        break;
      case 'error':
        this.onError(frame);
        break;
      case 'pong':
        this.awaitingPong = false;
        break;
      default:
        break; // member_removed, room_deleted: the close that follows says it
    }
  }

  onWelcome(frame) {
    const again = this.connectedOnce;
    this.welcomed = true;
    // The first replay lands at the bottom; a later one only if the reader is there.
    this.followReplay = !again || isNearBottom();
    this.connectedOnce = true;
    this.attempt = 0;
    if (frame.room) {
      this.room = { ...this.room, ...frame.room };
      renderRoomHeader(this.room);
    }
    // Everyone this node sees; our own socket's `join` follows this frame.
    this.online = new Map();
    for (const user of frame.online || []) {
      if (state.me && user.id === state.me.id) continue;
      this.online.set(user.id, { user, sockets: 1 });
    }
    this.renderOnline();
    setConn('connected', 'Connected');
    if (again) announce('Reconnected.');
    this.startPings();
    // Anything not yet acknowledged goes again: its client_id makes it the same message.
    for (const p of this.pending.values()) {
      if (p.state !== 'acked' && p.state !== 'failed') this.transmit(p);
    }
    this.updateHistoryControls();
  }

  /** `join`/`leave`: one user's count on one node goes up or down. */
  presence(user, delta, quiet = false) {
    if (!user) return;
    const entry = this.online.get(user.id) || { user, sockets: 0 };
    entry.user = { ...entry.user, ...user };
    entry.sockets = Math.max(0, entry.sockets + delta);
    if (entry.sockets > 0) this.online.set(user.id, entry);
    else this.online.delete(user.id);
    this.renderOnline();
    const mine = state.me && user.id === state.me.id;
    if (!mine && !quiet) {
      if (delta > 0 && entry.sockets === 1) announce(`${user.username} joined.`);
      if (delta < 0 && entry.sockets === 0) announce(`${user.username} left.`);
    }
  }

  /**
   * A coalesced `presence` frame: who came and went (`joined`/`left`, lists
   * of users), or the whole list (`online`); one user with a `status` also reads.
   */
  onPresence(frame) {
    if (Array.isArray(frame.online)) {
      const before = new Set(this.online.keys());
      this.online = new Map();
      for (const user of frame.online) {
        if (state.me && user.id === state.me.id) continue;
        this.online.set(user.id, { user, sockets: 1 });
        if (!before.has(user.id)) announce(`${user.username} joined.`);
      }
      this.renderOnline();
      return;
    }
    const list = (value) => (Array.isArray(value) ? value : value ? [value] : []);
    const joined = list(frame.joined);
    const left = list(frame.left);
    // A crowd is one announcement, not one per person.
    const quiet = joined.length + left.length > 3;
    for (const user of joined) this.presence(user, +1, quiet);
    for (const user of left) this.presence(user, -1, quiet);
    if (quiet) {
      const parts = [];
      if (joined.length) parts.push(`${joined.length} joined`);
      if (left.length) parts.push(`${left.length} left`);
      announce(`${parts.join(', ')}.`);
    }
    if (frame.user && frame.status) this.presence(frame.user, frame.status === 'offline' || frame.status === 'left' ? -1 : +1);
  }

  onlineIds() {
    const ids = new Set(this.online.keys());
    if (state.me) ids.add(state.me.id);
    return ids;
  }

  renderOnline() {
    const people = new Map();
    if (state.me) people.set(state.me.id, { user: state.me, name: `${state.me.username} (you)` });
    for (const [id, entry] of this.online) {
      if (!people.has(id)) people.set(id, { user: entry.user, name: entry.user.username });
    }
    const list = $('online-list');
    list.replaceChildren(
      ...[...people.entries()]
        .sort((a, b) => a[1].name.localeCompare(b[1].name))
        .map(([id, { user, name }]) => el('li', { 'data-user-id': id }, avatar(user), el('span', { text: name }))),
    );
    $('online-count').textContent = String(people.size);
    memberPresenceChanged(this.onlineIds());
  }

  // ---- messages

  upsert(view, { live = false, update = false } = {}) {
    if (typeof view.seq !== 'number') return;
    const existing = this.messages.get(view.seq);
    if (existing) {
      // Seen before (a replay overlap, or an edit or deletion): the newer state wins.
      const changed =
        update ||
        view.deleted !== existing.view.deleted ||
        (view.edited_at || null) !== (existing.view.edited_at || null);
      if (changed) {
        existing.view = { ...existing.view, ...view };
        renderMessage(existing.node, existing.view);
        if (update && !isMine(view)) {
          const who = authorName(view);
          announce(view.deleted ? `A message from ${who} was deleted.` : `${who} edited a message: ${view.content}`);
        }
      }
      return;
    }
    if (update) return; // an edit of a message older than what is shown
    const node = el('li', { class: 'msg', 'data-seq': view.seq, tabindex: '-1' });
    // The message list is a live log: a screen reader reads what is added to
    // it. Only someone else's new message is news; history, replays and our
    // own messages are added quietly.
    if (!live || isMine(view)) node.setAttribute('aria-live', 'off');
    renderMessage(node, view);
    this.messages.set(view.seq, { view, node });
    this.insertInOrder(node, view.seq);
    if (view.seq > this.lastSeq) this.lastSeq = view.seq;
    if (this.oldestSeq === null || view.seq < this.oldestSeq) this.oldestSeq = view.seq;
    this.settlePending(view);
    if (live) {
      const mine = isMine(view);
      if (mine || isNearBottom()) scrollToBottom();
      else $('jump-latest').hidden = false;
    } else if (!this.loadingOlder && (this.followReplay || isNearBottom())) {
      scrollToBottom();
    }
    this.updateHistoryControls();
  }

  insertInOrder(node, seq) {
    const list = $('messages');
    let after = list.lastElementChild;
    while (after && Number(after.dataset.seq) > seq) after = after.previousElementSibling;
    if (after) after.after(node);
    else list.prepend(node);
  }

  updateHistoryControls() {
    const atStart = this.connectedOnce && (this.oldestSeq === null || this.oldestSeq <= 1 || this.noOlder);
    $('load-older').hidden = !this.connectedOnce || atStart;
    $('history-start').hidden = !atStart;
  }

  async loadOlder() {
    if (this.loadingOlder || this.noOlder || this.oldestSeq === null || this.oldestSeq <= 1) return;
    this.loadingOlder = true;
    const button = $('load-older');
    button.disabled = true;
    button.textContent = 'Loading…';
    const scroller = $('scroller');
    const fromBottom = scroller.scrollHeight - scroller.scrollTop;
    try {
      const path = `/rooms/${encodeURIComponent(this.room.id)}/messages?before=${this.oldestSeq}&limit=${HISTORY_PAGE}`;
      const page = await api('GET', path);
      if (this.closed) return;
      for (const view of page) this.upsert(view);
      if (page.length < HISTORY_PAGE) this.noOlder = true;
      scroller.scrollTop = scroller.scrollHeight - fromBottom;
      announce(page.length ? `Loaded ${page.length} older messages.` : 'No older messages.');
    } catch (err) {
      showNotice(`Could not load older messages: ${err.message}`);
    } finally {
      this.loadingOlder = false;
      button.disabled = false;
      button.textContent = 'Load older messages';
      this.updateHistoryControls();
    }
  }

  // ---- sending

  sendMessage(content) {
    const p = { clientId: uuid(), content, state: 'new', timer: null, node: null };
    p.node = el('li', { class: 'msg mine pending', 'data-client-id': p.clientId });
    this.pending.set(p.clientId, p);
    $('outbox').append(p.node);
    this.transmit(p);
    scrollToBottom();
  }

  /** Over the socket when it is up; over HTTP otherwise (the socket's `since` brings it back). */
  async transmit(p) {
    clearTimeout(p.timer);
    this.setPending(p, 'sending');
    const frame = { type: 'message', content: p.content, client_id: p.clientId };
    if (utf8Bytes(p.content) <= SOCKET_CONTENT_BYTES && this.send(frame)) {
      p.timer = setTimeout(() => {
        if (p.state === 'sending') this.failPending(p, 'no answer from the server');
      }, ACK_TIMEOUT_MS);
      return;
    }
    try {
      await api('POST', `/rooms/${encodeURIComponent(this.room.id)}/messages`, {
        content: p.content,
        client_id: p.clientId,
      });
      if (this.pending.has(p.clientId)) this.setPending(p, 'acked');
      $('send-status').textContent = 'Sent.';
    } catch (err) {
      // Left the room, or the message came meanwhile (a resend on reconnect).
      if (this.closed || !this.pending.has(p.clientId)) return;
      if (err.code === 'rate_limited' && err.retryAfter) this.waitPending(p, err.retryAfter * 1000);
      else this.failPending(p, err.message);
    }
  }

  onAck(frame) {
    $('send-status').textContent = 'Sent.';
    const p = this.pending.get(frame.client_id);
    if (!p) return;
    clearTimeout(p.timer);
    this.setPending(p, 'acked');
  }

  onError(frame) {
    const p = frame.client_id && this.pending.get(frame.client_id);
    if (p && frame.code === 'rate_limited' && frame.retry_after_ms) {
      this.waitPending(p, frame.retry_after_ms);
      return;
    }
    if (p) {
      this.failPending(p, frame.detail || frame.code);
    } else {
      $('send-status').textContent = `Error: ${frame.detail || frame.code}`;
    }
  }

  /**
   * Past the message budget: sent again when the server said it takes one,
   * each waiting message a little after the one before, so that they go in
   * turn rather than all at once (and all but one refused again). Its
   * client_id keeps a resend the same message.
   */
  waitPending(p, ms) {
    clearTimeout(p.timer);
    const ahead = [...this.pending.values()].filter((q) => q !== p && q.state === 'waiting').length;
    this.setPending(p, 'waiting');
    p.timer = setTimeout(() => {
      if (!this.closed && this.pending.has(p.clientId)) this.transmit(p);
    }, ms + ahead * RETRY_SPACING_MS);
  }

  failPending(p, why) {
    clearTimeout(p.timer);
    this.setPending(p, 'failed', why);
    $('send-status').textContent = `Not sent: ${why}`;
  }

  /** The message itself arrived: its placeholder goes. */
  settlePending(view) {
    if (!view.client_id || !isMine(view)) return;
    const p = this.pending.get(view.client_id);
    if (!p) return;
    clearTimeout(p.timer);
    p.node.remove();
    this.pending.delete(view.client_id);
  }

  setPending(p, kind, why) {
    p.state = kind;
    const labels = {
      sending: 'Sending…',
      waiting: 'Too many messages at once; sending in a moment…',
      acked: 'Sent, waiting for delivery…',
      failed: `Not sent: ${why}`,
    };
    const actions = [];
    if (kind === 'failed') {
      actions.push(
        el('button', {
          type: 'button',
          class: 'link-button',
          text: 'Retry',
          onclick: () => this.transmit(p),
        }),
        el('button', {
          type: 'button',
          class: 'link-button',
          text: 'Discard',
          onclick: () => {
            p.node.remove();
            this.pending.delete(p.clientId);
            $('message-input').focus();
          },
        }),
      );
    }
    p.node.classList.toggle('failed', kind === 'failed');
    p.node.replaceChildren(
      el('div', { class: 'meta' }, avatar(state.me), el('span', { class: 'author', text: state.me ? state.me.username : 'you' })),
      el('p', { class: 'content', text: p.content }),
      el('p', { class: 'pending-state' }, el('span', { text: labels[kind] }), ...actions),
    );
  }
}

// ---------------------------------------------------------------- the room's header

export function renderRoomHeader(room) {
  $('room-title').textContent = roomTitle(room);
  const kinds = { public: 'Public room', group: 'Group room', private: 'Private chat' };
  $('room-meta').textContent = kinds[room.kind] || room.kind || '';
  document.title = `${roomTitle(room)} · roomcast`;
}

/** A private room reads as the other person's name when it is known. */
export function roomTitle(room) {
  return (room.kind === 'private' && room.peer && room.peer.username) || room.name;
}

// ---------------------------------------------------------------- message rendering

const isMine = (view) => Boolean(state.me && view.sender && view.sender.id === state.me.id);
// No sender: a system message, or one whose author deleted their account.
const authorName = (view) => (view.sender ? view.sender.username : view.sender_deleted ? 'deleted user' : 'system');

/** May the signed-in user delete other people's messages here? The room's owner, moderators and admins. */
export function canModerate(room) {
  if (!state.me || !room) return false;
  return state.me.role === 'admin' || state.me.role === 'moderator' || room.owner_id === state.me.id;
}

function renderMessage(node, view) {
  if (node.querySelector('.edit-form') && !view.deleted) {
    // Being edited here: keep the form, refresh only what it does not hold.
    node.dataset.stale = 'true';
    return;
  }
  // A shown message changes quietly: edits and deletions are announced on their own.
  if (node.isConnected) node.setAttribute('aria-live', 'off');
  const mine = isMine(view);
  const kind = view.sender ? '' : view.sender_deleted ? ' sender-deleted' : ' system';
  node.className = `msg${mine ? ' mine' : ''}${kind}${view.deleted ? ' deleted' : ''}`;
  node.dataset.id = view.id;
  const author = authorName(view);
  const meta = el(
    'div',
    { class: 'meta' },
    view.sender ? avatar(view.sender) : null,
    el('span', { class: 'author', text: author }),
    el('time', { datetime: view.created_at, title: new Date(view.created_at).toLocaleString(), text: formatTime(view.created_at) }),
    view.edited_at && !view.deleted
      ? el('span', { class: 'edited', title: `Edited ${new Date(view.edited_at).toLocaleString()}`, text: '(edited)' })
      : null,
  );
  const content = view.deleted
    ? el('p', { class: 'content tombstone', text: 'message deleted' })
    : el('p', { class: 'content', text: view.content ?? '' });
  const children = [meta, content];
  const room = state.session && state.session.room;
  const moderating = !mine && canModerate(room);
  if ((mine || moderating) && !view.deleted) {
    const excerpt = (view.content || '').slice(0, 40);
    const whose = mine ? '' : ` from ${author}`;
    children.push(
      el(
        'div',
        { class: 'actions', role: 'group', 'aria-label': `Message actions${whose}` },
        mine
          ? el('button', {
            type: 'button',
            class: 'link-button edit',
            'aria-label': `Edit message “${excerpt}”`,
            text: 'Edit',
            onclick: () => startEdit(node, view.seq),
          })
          : null,
        el('button', {
          type: 'button',
          class: 'link-button danger delete',
          'aria-label': `Delete message${whose} “${excerpt}”`,
          text: mine ? 'Delete' : 'Delete (moderate)',
          onclick: () => confirmDelete(node, view.seq),
        }),
      ),
    );
  }
  node.replaceChildren(...children);
}

/** The room's owner changed what they may do (e.g. after the room loaded): render the actions again. */
export function rerenderMessages() {
  if (!state.session) return;
  for (const entry of state.session.messages.values()) renderMessage(entry.node, entry.view);
}

function currentView(seq) {
  const entry = state.session && state.session.messages.get(seq);
  return entry ? entry.view : null;
}

function startEdit(node, seq) {
  const view = currentView(seq);
  if (!view || view.deleted) return;
  const id = `edit-${view.seq}`;
  const textarea = el('textarea', { id, name: 'content', rows: '2' });
  textarea.value = view.content || '';
  const error = el('p', { class: 'form-error', role: 'alert', hidden: true });
  const cancel = () => {
    delete node.dataset.stale;
    node.querySelector('.edit-form').remove();
    renderMessage(node, currentView(seq) || view);
    const edit = node.querySelector('.edit');
    if (edit) edit.focus();
  };
  const form = el(
    'form',
    { class: 'edit-form' },
    el('label', { for: id, class: 'sr-only', text: 'Edit message' }),
    textarea,
    error,
    el(
      'div',
      { class: 'inline' },
      el('button', { type: 'submit', class: 'button small', text: 'Save' }),
      el('button', { type: 'button', class: 'button secondary small', text: 'Cancel', onclick: cancel }),
    ),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const content = textarea.value;
    if (!content.trim()) {
      error.textContent = 'A message cannot be empty; delete it instead.';
      error.hidden = false;
      return;
    }
    try {
      const buttons = form.querySelectorAll('button');
      for (const b of buttons) b.disabled = true;
      let updated;
      try {
        updated = await api('PATCH', `/messages/${encodeURIComponent(view.id)}`, { content });
      } finally {
        for (const b of buttons) b.disabled = false;
      }
      const entry = state.session && state.session.messages.get(seq);
      if (entry) entry.view = { ...entry.view, ...updated };
      delete node.dataset.stale;
      form.remove();
      renderMessage(node, currentView(seq) || updated);
      $('send-status').textContent = 'Message edited.';
      const edit = node.querySelector('.edit');
      if (edit) edit.focus();
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
    }
  });
  textarea.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') {
      event.preventDefault();
      cancel();
    } else if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  const content = node.querySelector('.content');
  const actions = node.querySelector('.actions');
  if (actions) actions.remove();
  content.replaceWith(form);
  textarea.focus();
  textarea.setSelectionRange(textarea.value.length, textarea.value.length);
}

function confirmDelete(node, seq) {
  const view = currentView(seq);
  const actions = node.querySelector('.actions');
  if (!view || !actions) return;
  const restore = () => {
    renderMessage(node, currentView(seq) || view);
    const del = node.querySelector('.delete');
    if (del) del.focus();
  };
  const yes = el('button', {
    type: 'button',
    class: 'button danger small',
    text: 'Delete',
    onclick: async () => {
      try {
        yes.disabled = true;
        await api('DELETE', `/messages/${encodeURIComponent(view.id)}`);
        const entry = state.session && state.session.messages.get(seq);
        if (entry) {
          entry.view = { ...entry.view, deleted: true, content: null };
          renderMessage(node, entry.view);
        }
        $('send-status').textContent = 'Message deleted.';
        node.focus();
      } catch (err) {
        yes.disabled = false;
        showNotice(`Could not delete the message: ${err.message}`);
      }
    },
  });
  const group = el(
    'div',
    { class: 'actions confirm', role: 'group', 'aria-label': 'Confirm deletion' },
    el('span', { text: isMine(view) ? 'Delete this message?' : `Delete ${authorName(view)}’s message?` }),
    yes,
    el('button', { type: 'button', class: 'button secondary small', text: 'Keep', onclick: restore }),
  );
  group.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') restore();
  });
  actions.replaceWith(group);
  yes.focus();
}

// ---------------------------------------------------------------- scrolling

export function isNearBottom() {
  const s = $('scroller');
  return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
}

export function scrollToBottom() {
  const s = $('scroller');
  s.scrollTop = s.scrollHeight;
  $('jump-latest').hidden = true;
}

// ---------------------------------------------------------------- the composer and the scroller

export function wireChat() {
  const input = $('message-input');
  const autosize = () => {
    input.rows = Math.min(6, Math.max(1, input.value.split('\n').length));
  };
  $('composer').addEventListener('submit', (event) => {
    event.preventDefault();
    const content = input.value;
    if (!content.trim() || !state.session) return;
    state.session.sendMessage(content);
    input.value = '';
    autosize();
    input.focus();
  });
  input.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $('composer').requestSubmit();
    }
  });
  input.addEventListener('input', autosize);

  $('load-older').addEventListener('click', () => state.session && state.session.loadOlder());
  $('scroller').addEventListener('scroll', () => {
    const s = $('scroller');
    if (isNearBottom()) $('jump-latest').hidden = true;
    if (s.scrollTop < 40 && state.session && !$('load-older').hidden) state.session.loadOlder();
  });
  $('jump-latest').addEventListener('click', () => {
    scrollToBottom();
    input.focus();
  });
  $('reconnect-now').addEventListener('click', () => state.session && state.session.reconnectNow());
  window.addEventListener('online', () => state.session && state.session.reconnectNow());
  window.addEventListener('offline', () => {
    if (state.session && !state.session.ws) setConn('reconnecting', 'Offline — waiting for the network');
  });
}

