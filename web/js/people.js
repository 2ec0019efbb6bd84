// "Message a person": search users and open the private chat with one of
// them, the existing one when there is one, else a new one with both as
// members.

import { ApiError, api, optional, state } from './api.js';
import { $, avatar, clearErrorsOnInput, clearFormErrors, el, showFormError } from './dom.js';
import { searchUsers, userSearchAvailable } from './members.js';
import { openRoom, refreshRooms } from './rooms.js';

/** The private room with `user`: the server's endpoint when it has one, else found or made here. */
async function privateRoomWith(user) {
  const opened = await optional('POST', `/users/${encodeURIComponent(user.id)}/private-room`);
  if (opened) return opened.room || opened;
  // Without the endpoint: the private room we share, if the list has it…
  await refreshRooms();
  const existing = state.rooms.find((r) => r.kind === 'private' && r.peer && r.peer.id === user.id);
  if (existing) return existing;
  // …else a new one, with them added.
  const base = `dm-${state.me.username}-${user.username}`.slice(0, 56);
  let room = null;
  for (let i = 0; !room && i < 3; i += 1) {
    const name = i === 0 ? base : `${base}-${Math.random().toString(36).slice(2, 7)}`;
    try {
      room = await api('POST', '/rooms', { name, kind: 'private' });
    } catch (err) {
      if (err.code !== 'name_taken') throw err;
    }
  }
  if (!room) throw new ApiError('Could not find a free name for the chat.', 0);
  await api('POST', `/rooms/${encodeURIComponent(room.id)}/members`, { user_id: user.id });
  return room;
}

async function message(user, button) {
  const form = $('people-form');
  clearFormErrors(form);
  button.disabled = true;
  try {
    const room = await privateRoomWith(user);
    $('people-search').value = '';
    $('people-results').replaceChildren();
    $('people-status').textContent = '';
    await refreshRooms();
    const listed = state.rooms.find((r) => r.id === room.id);
    await openRoom(listed || { ...room, peer: { id: user.id, username: user.username, avatar_url: user.avatar_url } });
  } catch (err) {
    showFormError(form, err);
  } finally {
    button.disabled = false;
  }
}

async function search() {
  const form = $('people-form');
  const text = $('people-search').value.trim();
  const results = $('people-results');
  clearFormErrors(form);
  if (!text) {
    results.replaceChildren();
    $('people-status').textContent = '';
    return;
  }
  try {
    const found = (await searchUsers(text, 10)).filter((u) => !state.me || u.id !== state.me.id);
    if (!userSearchAvailable()) {
      $('people-status').textContent = 'This server cannot search people yet.';
      return;
    }
    results.replaceChildren(
      ...found.map((user) => el(
        'li',
        {},
        el(
          'button',
          {
            type: 'button',
            class: 'person-link',
            'aria-label': `Message ${user.username}`,
            onclick: (event) => message(user, event.currentTarget),
          },
          avatar(user),
          el('span', { text: user.username }),
        ),
      )),
    );
    $('people-status').textContent = found.length ? `${found.length} ${found.length === 1 ? 'person' : 'people'} found.` : `Nobody matches “${text}”.`;
  } catch (err) {
    showFormError(form, err);
  }
}

export function wirePeople() {
  const form = $('people-form');
  clearErrorsOnInput(form);
  let timer = null;
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    clearTimeout(timer);
    search();
  });
  $('people-search').addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(search, 250);
  });
}
