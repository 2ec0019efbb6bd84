// Guest links, `/#guest=<room>` (the server runs with GUEST_TOKENS=true):
// a name, then that one room as a guest, through `POST /generate-token`.

import { ApiError, api, setToken, state } from './api.js';
import { $, clearErrorsOnInput, clearFormErrors, hideNotice, setConn, showFormError, showView, withBusy } from './dom.js';
import { renderMe } from './auth.js';
import { openRoomByKey, showPane } from './rooms.js';

export function guestRoomFromHash() {
  const match = /^#guest=(.+)$/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

export function showGuest(room) {
  showView('guest-view');
  $('account').hidden = true;
  $('conn').hidden = true;
  $('guest-room').textContent = room;
  clearFormErrors($('guest-form'));
  $('guest-name').focus();
}

// The server gives a guest's account to whoever names it with the same
// address, so without one given the address is this browser's own secret:
// the same name here comes back as the same guest, and nobody who only
// knows the name can step into their seat. Nobody writes to it.
function browserGuestEmail(username) {
  const KEY = 'roomcast.guestKey';
  let key = null;
  try { key = localStorage.getItem(KEY); } catch { /* storage off: a key for this page only */ }
  if (!key) {
    const bytes = crypto.getRandomValues(new Uint8Array(12));
    key = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
    try { localStorage.setItem(KEY, key); } catch { /* as above */ }
  }
  return `${username.toLowerCase()}.${key}@guests.invalid`;
}

async function join(event) {
  event.preventDefault();
  const form = event.currentTarget;
  clearFormErrors(form);
  const room = guestRoomFromHash();
  const username = form.elements.username.value.trim();
  const email = form.elements.email.value.trim() || browserGuestEmail(username);
  if (!room || !username) {
    showFormError(form, new ApiError('Choose a name to join as a guest.', 0));
    return;
  }
  try {
    await withBusy(form, async () => {
      let res;
      try {
        res = await api('POST', '/generate-token', { username, email, room_id: room });
      } catch (err) {
        if (err.status === 404 && !err.fieldErrors.length && /route/.test(err.message)) {
          throw new ApiError('Guest links are switched off on this server: log in or create an account instead.', 404);
        }
        throw err;
      }
      setToken(res.token, res.expires_in);
      state.me = await api('GET', '/users/me');
      renderMe();
      $('account').hidden = false;
      $('conn').hidden = false;
      setConn('idle', 'No room open');
      hideNotice();
      showView('chat-view');
      showPane('room');
      await openRoomByKey(res.room_id || room);
    });
    form.reset();
  } catch (err) {
    showFormError(form, err);
  }
}

export function wireGuest() {
  const form = $('guest-form');
  clearErrorsOnInput(form);
  form.addEventListener('submit', join);
  $('guest-login').addEventListener('click', () => {
    history.replaceState(null, '', '/');
    showView('auth-view');
    $('login-username').focus();
  });
}
