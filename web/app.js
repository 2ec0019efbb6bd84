// roomcast web client: plain JavaScript, no build step, no outside hosts.
//
// HTTP calls carry `Authorization: Bearer <access_token>`; the token lives in
// sessionStorage (this tab only). A room is one WebSocket, `/ws/<room>`: the
// first connection asks for `history`, every reconnection for `since=<the last
// seq seen>`, so nothing is missed and nothing is shown twice (messages are
// keyed by seq).
'use strict';

(() => {
  const TOKEN_KEY = 'roomcast.token';
  const HISTORY_PAGE = 50;
  const BACKOFF_BASE_MS = 1000;
  const BACKOFF_MAX_MS = 30000;
  const PING_EVERY_MS = 25000;
  const ACK_TIMEOUT_MS = 15000;
  // Content bigger than this goes over HTTP, which answers a clear 413, rather
  // than over the socket, which the server closes (1009) for oversized frames.
  const SOCKET_CONTENT_BYTES = 4000;

  // ---------------------------------------------------------------- helpers

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = value;
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  /** A v4 UUID; crypto.randomUUID needs a secure context, getRandomValues does not. */
  function uuid() {
    if (window.crypto && typeof crypto.randomUUID === 'function' && window.isSecureContext) {
      return crypto.randomUUID();
    }
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  const utf8Bytes = (text) => new TextEncoder().encode(text).length;

  function formatTime(iso) {
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return '';
    const sameDay = d.toDateString() === new Date().toDateString();
    return sameDay
      ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
      : d.toLocaleString([], { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
  }

  // ---------------------------------------------------------------- state

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY),
    me: null, // {id, username}
    rooms: [],
    session: null, // the open room's RoomSession
  };

  // ---------------------------------------------------------------- HTTP

  class ApiError extends Error {
    constructor(message, status, problem) {
      super(message);
      this.status = status;
      this.problem = problem || null;
      this.code = problem && problem.code;
      this.fieldErrors = (problem && Array.isArray(problem.errors) && problem.errors) || [];
    }
  }

  /** A JSON call; a problem+json answer becomes an ApiError carrying its `detail`. */
  async function api(method, path, body) {
    const headers = { Accept: 'application/json, application/problem+json' };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    const init = { method, headers };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch {
      throw new ApiError('Cannot reach the server. Check your connection and try again.', 0);
    }
    const type = res.headers.get('content-type') || '';
    const isJson = type.includes('json');
    if (!res.ok) {
      const problem = isJson ? await res.json().catch(() => null) : null;
      let message = (problem && (problem.detail || problem.title)) || `${res.status} ${res.statusText}`;
      const retry = res.headers.get('retry-after');
      if (retry) message += ` (try again in ${retry} s)`;
      const err = new ApiError(message, res.status, problem);
      if (res.status === 401 && state.token && !path.startsWith('/auth/')) {
        sessionEnded(message);
      }
      throw err;
    }
    if (res.status === 204) return null;
    return isJson ? res.json() : res.text();
  }

  // ---------------------------------------------------------------- notices and forms

  function showNotice(text) {
    $('notice-text').textContent = text;
    $('notice').hidden = false;
  }

  function hideNotice() {
    $('notice').hidden = true;
    $('notice-text').textContent = '';
  }

  function clearFormErrors(form) {
    const box = form.querySelector('.form-error');
    box.hidden = true;
    box.textContent = '';
    for (const input of form.querySelectorAll('[aria-invalid]')) input.removeAttribute('aria-invalid');
    for (const note of form.querySelectorAll('.field-error')) note.remove();
  }

  /** Shows an error in a form: the problem's detail, and each field's message beside its input. */
  function showFormError(form, err) {
    const box = form.querySelector('.form-error');
    box.textContent = err.message;
    box.hidden = false;
    let first = null;
    for (const { field, message } of err.fieldErrors || []) {
      const input = form.querySelector(`[name="${CSS.escape(field)}"]`);
      if (!input) continue;
      const note = el('p', { class: 'field-error', id: `${input.id}-error`, text: message });
      input.setAttribute('aria-invalid', 'true');
      const described = (input.getAttribute('aria-describedby') || '').split(' ').filter(Boolean);
      if (!described.includes(note.id)) described.push(note.id);
      input.setAttribute('aria-describedby', described.join(' '));
      input.closest('.field').append(note);
      first = first || input;
    }
    if (first) first.focus();
  }

  async function withBusy(form, work) {
    const buttons = form.querySelectorAll('button');
    for (const b of buttons) b.disabled = true;
    form.setAttribute('aria-busy', 'true');
    try {
      return await work();
    } finally {
      for (const b of buttons) b.disabled = false;
      form.removeAttribute('aria-busy');
    }
  }

  // ---------------------------------------------------------------- auth

  function setToken(token) {
    state.token = token;
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  }

  async function logIn(username, password) {
    const res = await api('POST', '/auth/login', { username, password });
    setToken(res.access_token);
    await enterApp();
  }

  function showAuth() {
    $('chat-view').hidden = true;
    $('account').hidden = true;
    $('auth-view').hidden = false;
    $('conn').hidden = true;
    setConn('idle', 'Not connected');
  }

  /** The token no longer works (expired, revoked): back to the login form. */
  function sessionEnded(why) {
    closeRoom();
    setToken(null);
    state.me = null;
    showAuth();
    showNotice(`You have been signed out: ${why}. Please log in again.`);
    $('login-username').focus();
  }

  async function logOut() {
    closeRoom();
    try {
      await api('POST', '/auth/logout');
    } catch {
      // The token is forgotten here either way.
    }
    setToken(null);
    state.me = null;
    hideNotice();
    showAuth();
    $('login-username').focus();
  }

  async function enterApp() {
    state.me = await api('GET', '/users/me');
    $('me-name').textContent = state.me.username;
    $('account').hidden = false;
    $('conn').hidden = false;
    if (!state.session) setConn('idle', 'No room open');
    $('auth-view').hidden = true;
    $('chat-view').hidden = false;
    hideNotice();
    await refreshRooms();
    const wanted = roomFromHash();
    if (wanted) {
      await openRoomByKey(wanted);
    } else {
      $('room-search').focus();
    }
  }

  // ---------------------------------------------------------------- rooms

  async function refreshRooms() {
    const search = $('room-search').value.trim();
    const query = search ? `?search=${encodeURIComponent(search)}` : '';
    try {
      state.rooms = await api('GET', `/rooms${query}`);
    } catch (err) {
      showNotice(`Could not load rooms: ${err.message}`);
      return;
    }
    renderRooms(search);
  }

  function renderRooms(search) {
    const list = $('room-list');
    list.replaceChildren();
    const current = state.session && state.session.room.id;
    for (const room of state.rooms) {
      const members = `${room.member_count} member${room.member_count === 1 ? '' : 's'}`;
      const button = el(
        'button',
        {
          type: 'button',
          class: 'room-link',
          'aria-label': `${room.name}, ${room.kind} room, ${members}`,
          'aria-current': room.id === current ? 'true' : null,
          onclick: () => openRoom(room),
        },
        el('span', { class: 'room-name', text: room.name }),
        el('span', { class: `kind kind-${room.kind}`, text: room.kind }),
        el('span', { class: 'room-members muted', text: members }),
      );
      list.append(el('li', {}, button));
    }
    const empty = $('rooms-empty');
    empty.textContent = search ? `No rooms match “${search}”.` : 'No rooms yet: create the first one below.';
    empty.hidden = state.rooms.length > 0;
  }

  function roomFromHash() {
    const match = /^#room=(.+)$/.exec(location.hash);
    return match ? decodeURIComponent(match[1]) : null;
  }

  async function openRoomByKey(key) {
    try {
      const room = await api('GET', `/rooms/${encodeURIComponent(key)}`);
      openRoom(room);
    } catch (err) {
      showNotice(`Cannot open room “${key}”: ${err.message}`);
    }
  }

  function openRoom(room) {
    if (state.session && state.session.room.id === room.id) {
      showPane('room');
      $('message-input').focus();
      return;
    }
    closeRoom();
    hideNotice();
    state.session = new RoomSession(room);
    history.replaceState(null, '', `#room=${encodeURIComponent(room.name)}`);
    renderRoomHeader(room);
    $('messages').replaceChildren();
    $('outbox').replaceChildren();
    $('room-placeholder').hidden = true;
    $('scroller').hidden = false;
    $('composer').hidden = false;
    $('message-input').disabled = false;
    $('send-button').disabled = false;
    $('send-status').textContent = '';
    renderRooms($('room-search').value.trim());
    showPane('room');
    state.session.connect();
    $('message-input').focus();
  }

  function closeRoom() {
    if (state.session) state.session.close();
    state.session = null;
    $('messages').replaceChildren();
    $('outbox').replaceChildren();
    $('online-list').replaceChildren();
    $('online-count').textContent = '0';
    $('room-title').textContent = 'No room open';
    $('room-meta').textContent = '';
    $('room-placeholder').hidden = false;
    $('scroller').hidden = true;
    $('composer').hidden = true;
    $('jump-latest').hidden = true;
    $('load-older').hidden = true;
    $('history-start').hidden = true;
    $('message-input').disabled = true;
    $('send-button').disabled = true;
    document.title = 'roomcast';
    setConn('idle', 'No room open');
    showPane('rooms');
  }

  function renderRoomHeader(room) {
    $('room-title').textContent = room.name;
    const kinds = { public: 'Public room', group: 'Group room', private: 'Private room' };
    $('room-meta').textContent = kinds[room.kind] || room.kind || '';
    document.title = `${room.name} · roomcast`;
  }

  /** On narrow screens one pane shows at a time. */
  function showPane(pane) {
    $('chat-view').dataset.pane = pane;
  }

  // ---------------------------------------------------------------- connection state

  function setConn(kind, text) {
    $('conn').dataset.state = kind;
    $('conn-text').textContent = text;
    $('reconnect-now').hidden = kind !== 'reconnecting';
  }

  function announce(text) {
    const live = $('live');
    live.append(el('p', { text }));
    while (live.childElementCount > 5) live.firstElementChild.remove();
  }

  // ---------------------------------------------------------------- one room's socket

  class RoomSession {
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
      this.online = new Map(); // user id -> {username, sockets}
      this.pending = new Map(); // client_id -> {content, node, timer, state}
    }

    url() {
      const params = new URLSearchParams({ token: state.token });
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
      } catch (err) {
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
          sessionEnded('your session expired');
          return;
        case 4403:
          this.stop('Removed from this room', 'You were removed from this room.');
          refreshRooms();
          return;
        case 4404:
          this.stop('Room deleted', 'This room was deleted.');
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
          if (err.status === 401) return; // sessionEnded has run
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
        this.online.set(user.id, { username: user.username, sockets: 1 });
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

    presence(user, delta) {
      if (!user) return;
      const entry = this.online.get(user.id) || { username: user.username, sockets: 0 };
      entry.sockets = Math.max(0, entry.sockets + delta);
      if (entry.sockets > 0) this.online.set(user.id, entry);
      else this.online.delete(user.id);
      this.renderOnline();
      const mine = state.me && user.id === state.me.id;
      if (!mine) {
        if (delta > 0 && entry.sockets === 1) announce(`${user.username} joined.`);
        if (delta < 0 && entry.sockets === 0) announce(`${user.username} left.`);
      }
    }

    renderOnline() {
      const names = new Map();
      if (state.me) names.set(state.me.id, `${state.me.username} (you)`);
      for (const [id, entry] of this.online) {
        if (!names.has(id)) names.set(id, entry.username);
      }
      const list = $('online-list');
      list.replaceChildren(
        ...[...names.entries()]
          .sort((a, b) => a[1].localeCompare(b[1]))
          .map(([id, name]) => el('li', { 'data-user-id': id, text: name })),
      );
      $('online-count').textContent = String(names.size);
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
        this.failPending(p, err.message);
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
      if (p) {
        this.failPending(p, frame.detail || frame.code);
      } else {
        $('send-status').textContent = `Error: ${frame.detail || frame.code}`;
      }
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
      const labels = { sending: 'Sending…', acked: 'Sent, waiting for delivery…', failed: `Not sent: ${why}` };
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
        el('div', { class: 'meta' }, el('span', { class: 'author', text: state.me ? state.me.username : 'you' })),
        el('p', { class: 'content', text: p.content }),
        el('p', { class: 'pending-state' }, el('span', { text: labels[kind] }), ...actions),
      );
    }
  }

  // ---------------------------------------------------------------- message rendering

  const isMine = (view) => Boolean(state.me && view.sender && view.sender.id === state.me.id);
  // No sender: a system message, or one whose author deleted their account.
  const authorName = (view) => (view.sender ? view.sender.username : view.sender_deleted ? 'deleted user' : 'system');

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
    if (mine && !view.deleted) {
      const excerpt = (view.content || '').slice(0, 40);
      children.push(
        el(
          'div',
          { class: 'actions' },
          el('button', {
            type: 'button',
            class: 'link-button edit',
            'aria-label': `Edit message “${excerpt}”`,
            text: 'Edit',
            onclick: () => startEdit(node, view.seq),
          }),
          el('button', {
            type: 'button',
            class: 'link-button danger delete',
            'aria-label': `Delete message “${excerpt}”`,
            text: 'Delete',
            onclick: () => confirmDelete(node, view.seq),
          }),
        ),
      );
    }
    node.replaceChildren(...children);
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
        const updated = await withBusy(form, () => api('PATCH', `/messages/${encodeURIComponent(view.id)}`, { content }));
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
      el('span', { text: 'Delete this message?' }),
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

  function isNearBottom() {
    const s = $('scroller');
    return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
  }

  function scrollToBottom() {
    const s = $('scroller');
    s.scrollTop = s.scrollHeight;
    $('jump-latest').hidden = true;
  }

  // ---------------------------------------------------------------- wiring

  function wire() {
    $('login-form').addEventListener('submit', async (event) => {
      event.preventDefault();
      const form = event.currentTarget;
      clearFormErrors(form);
      const username = form.elements.username.value.trim();
      const password = form.elements.password.value;
      if (!username || !password) {
        showFormError(form, new ApiError('Enter your username (or email) and password.', 0));
        return;
      }
      try {
        await withBusy(form, () => logIn(username, password));
        form.reset();
      } catch (err) {
        showFormError(form, err);
      }
    });

    $('register-form').addEventListener('submit', async (event) => {
      event.preventDefault();
      const form = event.currentTarget;
      clearFormErrors(form);
      const body = {
        username: form.elements.username.value.trim(),
        email: form.elements.email.value.trim(),
        password: form.elements.password.value,
      };
      try {
        await withBusy(form, async () => {
          await api('POST', '/auth/register', body);
          await logIn(body.username, body.password);
        });
        form.reset();
      } catch (err) {
        showFormError(form, err);
      }
    });

    // A stale error goes as soon as the user changes what it was about.
    for (const id of ['login-form', 'register-form', 'create-room-form']) {
      const form = $(id);
      form.addEventListener('input', () => {
        if (!form.querySelector('.form-error').hidden) clearFormErrors(form);
      });
    }

    $('logout').addEventListener('click', logOut);
    $('notice-close').addEventListener('click', hideNotice);
    $('reconnect-now').addEventListener('click', () => state.session && state.session.reconnectNow());
    $('back-to-rooms').addEventListener('click', () => {
      showPane('rooms');
      $('room-search').focus();
    });

    let searchTimer = null;
    $('search-form').addEventListener('submit', (event) => {
      event.preventDefault();
      clearTimeout(searchTimer);
      refreshRooms();
    });
    $('room-search').addEventListener('input', () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(refreshRooms, 250);
    });

    $('create-room-form').addEventListener('submit', async (event) => {
      event.preventDefault();
      const form = event.currentTarget;
      clearFormErrors(form);
      const body = { name: form.elements.name.value.trim(), kind: form.elements.kind.value };
      if (!body.name) {
        showFormError(form, new ApiError('Give the room a name.', 0));
        return;
      }
      try {
        const room = await withBusy(form, () => api('POST', '/rooms', body));
        form.reset();
        $('room-search').value = '';
        await refreshRooms();
        openRoom(room);
      } catch (err) {
        showFormError(form, err);
      }
    });

    const input = $('message-input');
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
    const autosize = () => {
      input.rows = Math.min(6, Math.max(1, input.value.split('\n').length));
    };
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

    window.addEventListener('online', () => state.session && state.session.reconnectNow());
    window.addEventListener('offline', () => {
      if (state.session && !state.session.ws) setConn('reconnecting', 'Offline — waiting for the network');
    });
    window.addEventListener('hashchange', () => {
      const wanted = roomFromHash();
      if (wanted && state.me && (!state.session || state.session.room.name !== wanted)) openRoomByKey(wanted);
    });
  }

  async function start() {
    wire();
    if (!state.token) {
      showAuth();
      return;
    }
    try {
      await enterApp();
    } catch (err) {
      if (err.status !== 401) {
        // The server is unreachable or failing: keep the token, say so.
        showAuth();
        showNotice(`Could not restore your session: ${err.message}`);
      }
    }
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
