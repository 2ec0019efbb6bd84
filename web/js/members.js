// A room's members: who they are and who is online, and for the room's owner
// (or an admin) adding someone by username, with suggestions, and removing
// them. A private room holds two people: a third is refused (`room_full`).

import { ApiError, api, isAdmin, state } from './api.js';
import { $, announce, avatar, clearErrorsOnInput, clearFormErrors, el, showFormError, withBusy } from './dom.js';
import { refreshRooms } from './rooms.js';

let members = []; // [{user_id, username, avatar_url?}]
let online = new Set();

// ---------------------------------------------------------------- user search (shared with private chats)

let userSearch = null; // null: unknown; 'users' or 'admin' once one answered; false: none
/**
 * Users whose name matches `text` (`GET /users?search=`: users only, no
 * emails). Where the server does not have it yet, admins use the admin list.
 */
export async function searchUsers(text, limit = 8) {
  const query = `search=${encodeURIComponent(text)}&limit=${limit}`;
  if (userSearch === null || userSearch === 'users') {
    try {
      const found = await api('GET', `/users?${query}`);
      userSearch = 'users';
      return found;
    } catch (err) {
      if (err.status !== 404 && err.status !== 405) throw err;
      userSearch = isAdmin() ? 'admin' : false;
    }
  }
  if (userSearch === 'admin') return api('GET', `/admin/users?${query}`);
  return [];
}

export const userSearchAvailable = () => userSearch !== false;

// ---------------------------------------------------------------- the panel

const manages = (room) => Boolean(state.me && room && (room.owner_id === state.me.id || isAdmin()));

/** The header's "Members" button: every room but a guest's has one. */
export function showMembersButton(room) {
  const button = $('members-toggle');
  button.hidden = !room;
  button.setAttribute('aria-expanded', 'false');
  $('members-panel').hidden = true;
}

export function closeMembers() {
  members = [];
  online = new Set();
  $('members-panel').hidden = true;
  $('member-list').replaceChildren();
  $('members-toggle').setAttribute('aria-expanded', 'false');
}

async function toggleMembers() {
  const panel = $('members-panel');
  const opening = panel.hidden;
  panel.hidden = !opening;
  $('members-toggle').setAttribute('aria-expanded', String(opening));
  if (opening) {
    await loadMembers();
    $('members-title').focus();
  }
}

export async function loadMembers() {
  const session = state.session;
  if (!session) return;
  const room = session.room;
  const form = $('add-member-form');
  form.hidden = !manages(room) || room.kind === 'public';
  $('members-status').textContent = '';
  try {
    members = await api('GET', `/rooms/${encodeURIComponent(room.id)}/members`);
  } catch (err) {
    $('members-status').textContent = `Could not load the members: ${err.message}`;
    return;
  }
  if (state.session !== session) return;
  online = session.onlineIds();
  renderMembers();
}

function renderMembers() {
  const room = state.session && state.session.room;
  const list = $('member-list');
  const canRemove = manages(room);
  list.replaceChildren(
    ...[...members]
      .sort((a, b) => a.username.localeCompare(b.username))
      .map((m) => {
        const me = state.me && m.user_id === state.me.id;
        const isOnline = online.has(m.user_id);
        const user = { id: m.user_id, username: m.username, avatar_url: m.avatar_url };
        return el(
          'li',
          { 'data-user-id': m.user_id, class: isOnline ? 'member online' : 'member' },
          avatar(user),
          el('span', { class: 'member-name', text: me ? `${m.username} (you)` : m.username }),
          room && room.owner_id === m.user_id ? el('span', { class: 'badge', text: 'owner' }) : null,
          el('span', { class: 'presence', text: isOnline ? 'online' : 'offline' }),
          canRemove && !me
            ? el('button', {
              type: 'button',
              class: 'link-button danger',
              'aria-label': `Remove ${m.username} from the room`,
              text: 'Remove',
              onclick: (event) => removeMember(m, event.currentTarget),
            })
            : null,
        );
      }),
  );
  $('member-count').textContent = String(members.length);
}

/** The online list changed: the member list's online marks follow. */
export function memberPresenceChanged(ids) {
  online = ids;
  if (!$('members-panel').hidden) renderMembers();
}

async function removeMember(member, button) {
  const room = state.session && state.session.room;
  if (!room) return;
  button.disabled = true;
  try {
    await api('DELETE', `/rooms/${encodeURIComponent(room.id)}/members/${encodeURIComponent(member.user_id)}`);
    $('members-status').textContent = `${member.username} was removed.`;
    announce(`${member.username} was removed from the room.`);
    await loadMembers();
    refreshRooms(); // the room's member count in the list
    $('add-member-name').focus();
  } catch (err) {
    button.disabled = false;
    $('members-status').textContent = `Could not remove ${member.username}: ${err.message}`;
  }
}

async function addMember(event) {
  event.preventDefault();
  const form = event.currentTarget;
  clearFormErrors(form);
  const room = state.session && state.session.room;
  const username = form.elements.username.value.trim();
  if (!room) return;
  if (!username) {
    showFormError(form, new ApiError('Type the username of the person to add.', 0));
    return;
  }
  try {
    await withBusy(form, () => api('POST', `/rooms/${encodeURIComponent(room.id)}/members`, { username }));
    form.reset();
    $('members-status').textContent = `${username} was added.`;
    await loadMembers();
    refreshRooms(); // the room's member count in the list
    form.elements.username.focus();
  } catch (err) {
    if (err.code === 'room_full') {
      err.message = `This private chat is full: it already has two people (${err.message}).`;
    }
    showFormError(form, err);
  }
}

let suggestTimer = null;
async function suggest() {
  const input = $('add-member-name');
  const text = input.value.trim();
  if (!text) {
    $('member-suggestions').replaceChildren();
    return;
  }
  try {
    const found = await searchUsers(text);
    const present = new Set(members.map((m) => m.user_id));
    $('member-suggestions').replaceChildren(
      ...found.filter((u) => !present.has(u.id)).map((u) => el('option', { value: u.username })),
    );
  } catch {
    // Suggestions are a help, not a need.
  }
}

export function wireMembers() {
  $('members-toggle').addEventListener('click', toggleMembers);
  const form = $('add-member-form');
  clearErrorsOnInput(form);
  form.addEventListener('submit', addMember);
  $('add-member-name').addEventListener('input', () => {
    clearTimeout(suggestTimer);
    suggestTimer = setTimeout(suggest, 200);
  });
}
