// roomcast web client: plain JavaScript modules, no build step, no outside hosts.
//
// One module per screen: auth.js (log in, register), rooms.js (the room list,
// private chats open through people.js), chat.js (a room's conversation),
// members.js, account.js, admin.js, echo.js and guest.js; api.js is the HTTP
// side and dom.js the shared helpers. This one routes between the screens:
// `/admin` or `#admin`, `#account`, `#echo`, `#room=<name>`, `#guest=<room>`.

import { isAdmin, isGuest, state } from './api.js';
import { $, currentView, hideNotice, showNotice, showView } from './dom.js';
import { enterApp, resume, showAuth, wireAuth } from './auth.js';
import { openRoomByKey, roomFromHash, showPane, wireRooms } from './rooms.js';
import { wireChat } from './chat.js';
import { wireMembers } from './members.js';
import { wirePeople } from './people.js';
import { showAccount, wireAccount } from './account.js';
import { showAdmin, wireAdmin } from './admin.js';
import { leaveEcho, showEcho, wireEcho } from './echo.js';
import { guestRoomFromHash, showGuest, wireGuest } from './guest.js';

function wantedScreen() {
  if (location.pathname.replace(/\/+$/, '') === '/admin' || location.hash === '#admin') return 'admin';
  if (location.hash === '#account') return 'account';
  if (location.hash === '#echo') return 'echo';
  return 'chat';
}

function markNav(screen) {
  for (const link of document.querySelectorAll('#main-nav a')) {
    if (link.dataset.screen === screen) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

/** Shows the screen the address names. */
export async function route() {
  const guestRoom = guestRoomFromHash();
  if (!state.me) {
    if (guestRoom) showGuest(guestRoom);
    else showAuth();
    return;
  }
  const screen = isGuest() ? 'chat' : wantedScreen();
  if (currentView() === 'echo-view' && screen !== 'echo') leaveEcho();
  markNav(screen);
  if (screen === 'admin') {
    showView('admin-view');
    if (!isAdmin()) showNotice('The admin panel is for admins only.');
    showAdmin();
    return;
  }
  if (screen === 'account') {
    showView('account-view');
    showAccount();
    return;
  }
  if (screen === 'echo') {
    showView('echo-view');
    await showEcho();
    return;
  }
  showView('chat-view');
  // A signed-in user following a guest link simply opens the room.
  const wanted = roomFromHash() || guestRoom;
  if (wanted && (!state.session || (state.session.room.name !== wanted && state.session.room.id !== wanted))) {
    await openRoomByKey(wanted);
  } else if (state.session) {
    showPane('room');
  } else {
    showPane('rooms');
    $('room-search').focus();
  }
}

function wireNav() {
  for (const link of document.querySelectorAll('#main-nav a')) {
    link.addEventListener('click', (event) => {
      if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
      event.preventDefault();
      hideNotice();
      history.pushState(null, '', link.getAttribute('href'));
      route();
    });
  }
  window.addEventListener('popstate', () => route());
  window.addEventListener('hashchange', () => route());
}

async function start() {
  wireAuth();
  wireRooms();
  wireChat();
  wireMembers();
  wirePeople();
  wireAccount();
  wireAdmin();
  wireEcho();
  wireGuest();
  wireNav();
  try {
    if (state.token) await enterApp();
    else if (!guestRoomFromHash() && (await resume())) return;
    else await route();
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
