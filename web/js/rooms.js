// The rooms screen: the list (search, create), opening and closing a room,
// deleting a room (its owner or an admin, after a confirm step), and the
// per-user channel that adds a room to the list the moment someone adds you.

import { ApiError, api, isGuest, state } from './api.js';
import {
  $, announce, avatar, clearErrorsOnInput, clearFormErrors, el, hideNotice, setConn, showFormError, showNotice, withBusy,
} from './dom.js';
import { RoomSession, renderRoomHeader, roomTitle } from './chat.js';
import { closeMembers, showMembersButton } from './members.js';

// ---------------------------------------------------------------- the list

export async function refreshRooms() {
  if (!state.me || isGuest()) return;
  const search = $('room-search').value.trim();
  const query = search ? `?search=${encodeURIComponent(search)}` : '';
  let rooms;
  try {
    rooms = await api('GET', `/rooms${query}`);
  } catch (err) {
    showNotice(`Could not load rooms: ${err.message}`);
    return;
  }
  await namePrivateRooms(rooms);
  state.rooms = rooms;
  renderRooms(search);
}

// A public room made or deleted anywhere reaches every signed-in user at
// once: each page waits a moment, a different one for each, and reloads
// its list once for all the changes meanwhile, rather than once per change.
let refreshSoon = null;
function refreshRoomsSoon() {
  if (refreshSoon) return;
  refreshSoon = setTimeout(() => {
    refreshSoon = null;
    refreshRooms();
  }, 250 + Math.random() * 1000);
}

const peers = new Map(); // private room id -> the other member {id, username, avatar_url}

/** A private room is shown as the other person: ask its members once (unless the server said). */
async function namePrivateRooms(rooms) {
  const unknown = rooms.filter((r) => r.kind === 'private' && !r.peer && !peers.has(r.id));
  await Promise.all(unknown.slice(0, 20).map(async (room) => {
    try {
      const members = await api('GET', `/rooms/${encodeURIComponent(room.id)}/members`);
      const other = members.find((m) => !state.me || m.user_id !== state.me.id);
      if (other) peers.set(room.id, { id: other.user_id, username: other.username, avatar_url: other.avatar_url });
    } catch {
      // Named by the room's own name, then.
    }
  }));
  for (const room of rooms) {
    if (room.kind === 'private' && !room.peer && peers.has(room.id)) room.peer = peers.get(room.id);
  }
}

let rendered = '';

function renderRooms(search) {
  const list = $('room-list');
  const current = state.session && state.session.room.id;
  // A poll that changed nothing leaves the list (and the focus in it) alone.
  const key = JSON.stringify([search, current, state.rooms]);
  if (key === rendered && list.childElementCount === state.rooms.length) return;
  rendered = key;
  const focused = document.activeElement && document.activeElement.closest && document.activeElement.closest('#room-list button');
  const refocus = focused ? focused.dataset.roomId : null;
  list.replaceChildren();
  for (const room of state.rooms) {
    const members = `${room.member_count} member${room.member_count === 1 ? '' : 's'}`;
    const title = roomTitle(room);
    const kindLabel = room.kind === 'private' ? 'private chat' : `${room.kind} room`;
    const button = el(
      'button',
      {
        type: 'button',
        class: 'room-link',
        'aria-label': `${title}, ${kindLabel}, ${members}`,
        'aria-current': room.id === current ? 'true' : null,
        'data-room-id': room.id,
        onclick: () => openRoom(room),
      },
      el('span', { class: 'room-name' }, room.kind === 'private' && room.peer ? avatar(room.peer) : null, el('span', { text: title })),
      el('span', { class: `kind kind-${room.kind}`, text: room.kind }),
      el('span', { class: 'room-members muted', text: members }),
    );
    list.append(el('li', {}, button));
  }
  if (refocus) {
    const again = list.querySelector(`button[data-room-id="${CSS.escape(refocus)}"]`);
    if (again) again.focus();
  }
  const empty = $('rooms-empty');
  empty.textContent = search ? `No rooms match “${search}”.` : 'No rooms yet: create the first one below.';
  empty.hidden = state.rooms.length > 0;
}

export function roomFromHash() {
  const match = /^#room=(.+)$/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

export async function openRoomByKey(key) {
  try {
    const room = await api('GET', `/rooms/${encodeURIComponent(key)}`);
    await openRoom(room);
  } catch (err) {
    showNotice(`Cannot open room “${key}”: ${err.message}`);
  }
}

// ---------------------------------------------------------------- one room open

export async function openRoom(room) {
  if (state.session && state.session.room.id === room.id) {
    showPane('room');
    $('message-input').focus();
    return;
  }
  closeRoom();
  hideNotice();
  const known = state.rooms.find((r) => r.id === room.id);
  if (known && known.peer && !room.peer) room = { ...room, peer: known.peer };
  state.session = new RoomSession(room);
  history.replaceState(null, '', `${location.pathname === '/' ? '' : '/'}#room=${encodeURIComponent(room.name)}`);
  renderRoomHeader(room);
  $('messages').replaceChildren();
  $('outbox').replaceChildren();
  $('room-placeholder').hidden = true;
  $('scroller').hidden = false;
  $('composer').hidden = false;
  $('message-input').disabled = false;
  $('send-button').disabled = false;
  $('send-status').textContent = '';
  renderRoomTools(room);
  renderRooms($('room-search').value.trim());
  showPane('room');
  const session = state.session;
  if (room.kind === 'public' && !isGuest()) {
    // Opening a public room joins it, so its member count is true.
    try {
      const joined = await api('POST', `/rooms/${encodeURIComponent(room.id)}/join`);
      if (state.session === session && joined) session.room = { ...session.room, ...joined, peer: session.room.peer };
      refreshRooms();
    } catch {
      // The socket says it if the room cannot be entered.
    }
  }
  if (state.session !== session) return;
  session.connect();
  $('message-input').focus();
}

export function closeRoom() {
  if (state.session) state.session.close();
  state.session = null;
  closeMembers();
  $('messages').replaceChildren();
  $('outbox').replaceChildren();
  $('online-list').replaceChildren();
  $('online-count').textContent = '0';
  $('room-title').textContent = 'No room open';
  $('room-meta').textContent = '';
  $('room-tools').hidden = true;
  $('delete-room-confirm').hidden = true;
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

/** The header's buttons: members (rooms one is invited to), and delete for the owner or an admin. */
function renderRoomTools(room) {
  const guest = isGuest();
  $('room-tools').hidden = guest;
  showMembersButton(room);
  const owner = state.me && (room.owner_id === state.me.id || state.me.role === 'admin');
  $('delete-room').hidden = guest || !owner;
  $('delete-room-confirm').hidden = true;
}

/** On narrow screens one pane shows at a time. */
export function showPane(pane) {
  $('chat-view').dataset.pane = pane;
}

// ---------------------------------------------------------------- deleting a room

function askDeleteRoom() {
  const room = state.session && state.session.room;
  if (!room) return;
  $('delete-room-name').textContent = room.name;
  $('delete-room-confirm').hidden = false;
  $('delete-room-yes').focus();
}

function keepRoom() {
  $('delete-room-confirm').hidden = true;
  $('delete-room').focus();
}

async function deleteRoom() {
  const room = state.session && state.session.room;
  if (!room) return;
  const yes = $('delete-room-yes');
  yes.disabled = true;
  try {
    await api('DELETE', `/rooms/${encodeURIComponent(room.id)}`);
    closeRoom();
    history.replaceState(null, '', location.pathname);
    announce(`Room ${room.name} deleted.`);
    showNotice(`The room “${room.name}” was deleted.`);
    await refreshRooms();
    $('room-search').focus();
  } catch (err) {
    showNotice(`Could not delete the room: ${err.message}`);
  } finally {
    yes.disabled = false;
  }
}

// ---------------------------------------------------------------- the per-user channel

const PING_EVERY_MS = 25000; // under the usual proxy idle timeout (60 s)
const FALLBACK_POLL_MS = 30000; // only while the socket is down

/**
 * `GET /ws` (no room): the user's own socket. `room_added` and
 * `room_removed` (your memberships), `room_listed` and `room_unlisted` (public
 * rooms, for everyone) come as they happen, on whichever node, so a room
 * someone adds you to appears at once. While the socket is down the list is fetched
 * again now and then; when it comes back, once.
 */
class UserChannel {
  constructor() {
    this.ws = null;
    this.closed = true;
    this.attempt = 0;
    this.timer = null;
    this.poller = null;
    this.pinger = null;
    this.awaitingPong = false;
  }

  start() {
    this.closed = false;
    this.connect();
  }

  connect() {
    if (this.closed || this.ws) return;
    // The login cookie authenticates it (no token in a URL).
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    let ws;
    try {
      ws = new WebSocket(`${scheme}//${location.host}/ws`);
    } catch {
      this.retry();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      this.stopPolling();
      this.startPings();
      // Whatever changed while it was down.
      refreshRooms();
    };
    ws.onmessage = (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      this.onFrame(frame);
    };
    ws.onclose = (event) => {
      if (ws !== this.ws) return;
      this.ws = null;
      this.onClose(event);
    };
  }

  onFrame(frame) {
    if (frame.type === 'room_added') {
      const room = frame.room || {};
      // Said aloud only when it is news: not a room already listed (a public
      // one you opened), not one you created, not the one open here.
      const known = state.rooms.some((r) => r.id === room.id);
      const mine = state.me && room.owner_id === state.me.id;
      const open = state.session && state.session.room.id === room.id;
      refreshRooms();
      if (!known && !mine && !open) {
        const what = room.kind === 'private'
          ? `a private chat with ${room.peer ? room.peer.username : 'someone'}`
          : `the room ${room.name || ''}`;
        announce(`You were added to ${what}.`);
      }
    } else if (frame.type === 'room_removed') {
      refreshRooms();
    } else if (['room_listed', 'room_unlisted'].includes(frame.type)) {
      refreshRoomsSoon();
    } else if (frame.type === 'pong') {
      this.awaitingPong = false;
    }
  }

  async onClose(event) {
    clearInterval(this.pinger);
    if (this.closed) return;
    if (event.code === 4001) {
      // The token lapsed under the socket: renewing it (the refresh cookie)
      // is what a call does on a 401; a session that ended signs out there.
      try {
        await api('GET', '/users/me');
      } catch {
        return;
      }
      this.attempt = 0;
    }
    this.retry();
  }

  startPings() {
    clearInterval(this.pinger);
    this.awaitingPong = false;
    this.pinger = setInterval(() => {
      const ws = this.ws;
      if (!ws || ws.readyState !== WebSocket.OPEN) return;
      if (this.awaitingPong) {
        // No answer to the last ping: the connection is dead though nobody closed it.
        this.ws = null;
        ws.onclose = null;
        ws.close();
        this.onClose({ code: 1006 });
        return;
      }
      this.awaitingPong = true;
      ws.send(JSON.stringify({ type: 'ping' }));
    }, PING_EVERY_MS);
  }

  retry() {
    if (this.closed) return;
    this.startPolling();
    const delay = Math.min(30000, 1000 * 2 ** this.attempt);
    this.attempt += 1;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  startPolling() {
    if (this.poller) return;
    this.poller = setInterval(() => {
      if (document.visibilityState !== 'hidden') refreshRooms();
    }, FALLBACK_POLL_MS);
  }

  stopPolling() {
    clearInterval(this.poller);
    this.poller = null;
  }

  stop() {
    this.closed = true;
    clearTimeout(this.timer);
    clearInterval(this.pinger);
    this.stopPolling();
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, 'signed out');
  }
}

export const userChannel = new UserChannel();

// ---------------------------------------------------------------- wiring

export function wireRooms() {
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

  const create = $('create-room-form');
  clearErrorsOnInput(create);
  create.addEventListener('submit', async (event) => {
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
      await openRoom(room);
    } catch (err) {
      showFormError(form, err);
    }
  });

  // A tab coming back into view reads its list again (a socket asleep in a
  // background tab may have missed a frame).
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible' && state.me && !isGuest()) refreshRooms();
  });

  $('back-to-rooms').addEventListener('click', () => {
    showPane('rooms');
    $('room-search').focus();
  });
  $('delete-room').addEventListener('click', askDeleteRoom);
  $('delete-room-no').addEventListener('click', keepRoom);
  $('delete-room-yes').addEventListener('click', deleteRoom);
  $('delete-room-confirm').addEventListener('keydown', (event) => {
    if (event.key === 'Escape') keepRoom();
  });
}
