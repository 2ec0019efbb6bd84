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

async function join(event) {
  event.preventDefault();
  const form = event.currentTarget;
  clearFormErrors(form);
  const room = guestRoomFromHash();
  const username = form.elements.username.value.trim();
  // The address only tells the same guest apart on the next visit; nobody writes to it.
  const email = form.elements.email.value.trim() || `${username.toLowerCase()}@guests.invalid`;
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
