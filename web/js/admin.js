// The admin panel (`/admin`, or "Admin" in the menu; admins only): users,
// searched and paged, each with their role to change, and a form to create
// a user with a role. Others never see the link, and the page refuses them.

import { ApiError, api, isAdmin, state } from './api.js';
import {
  $, announce, avatar, clearErrorsOnInput, clearFormErrors, el, formatTime, formStatus, showFormError, withBusy,
} from './dom.js';

const PAGE = 20;
const ROLES = ['user', 'moderator', 'admin'];
let offset = 0;
let search = '';

export function showAdmin() {
  $('admin-refused').hidden = isAdmin();
  $('admin-panel').hidden = !isAdmin();
  if (!isAdmin()) {
    $('admin-title').focus();
    return;
  }
  offset = 0;
  loadUsers();
  $('admin-title').focus();
}

async function loadUsers() {
  const status = $('admin-status');
  const params = new URLSearchParams({ limit: String(PAGE + 1), offset: String(offset) });
  if (search) params.set('search', search);
  let users;
  try {
    users = await api('GET', `/admin/users?${params}`);
  } catch (err) {
    status.textContent = `Could not load users: ${err.message}`;
    return;
  }
  const more = users.length > PAGE;
  users = users.slice(0, PAGE);
  const body = $('admin-users');
  body.replaceChildren(...users.map(userRow));
  const first = users.length ? offset + 1 : offset;
  const last = offset + users.length;
  const page = Math.floor(offset / PAGE) + 1;
  $('admin-page').textContent = users.length ? `Page ${page}: users ${first}–${last}` : `Page ${page}: no users`;
  status.textContent = search
    ? `${users.length}${more ? '+' : ''} users match “${search}”.`
    : '';
  $('admin-prev').disabled = offset === 0;
  $('admin-next').disabled = !more;
}

function userRow(user) {
  const select = el(
    'select',
    { id: `role-${user.id}`, name: 'role', 'aria-label': `Role of ${user.username}`, 'data-user-id': user.id },
    ...ROLES.concat(ROLES.includes(user.role) ? [] : [user.role]).map((role) =>
      el('option', { value: role, selected: role === user.role, text: role })),
  );
  const self = state.me && user.id === state.me.id;
  if (self || user.role === 'guest') select.disabled = true;
  const save = el('button', {
    type: 'button',
    class: 'button secondary small',
    text: 'Save role',
    'aria-label': `Save the role of ${user.username}`,
    disabled: self || user.role === 'guest',
    onclick: () => setRole(user, select, save),
  });
  return el(
    'tr',
    { 'data-user-id': user.id },
    el('th', { scope: 'row' }, el('span', { class: 'user-cell' }, avatar(user), el('span', { text: user.username }))),
    el('td', { class: 'email', text: user.email || '' }),
    el('td', {}, el('span', { class: 'inline' }, select, save)),
    el('td', { class: 'muted small' }, el('time', { datetime: user.created_at, text: formatTime(user.created_at) })),
  );
}

async function setRole(user, select, button) {
  const role = select.value;
  button.disabled = true;
  try {
    const updated = await api('PATCH', `/admin/users/${encodeURIComponent(user.id)}`, { role });
    user.role = updated.role;
    $('admin-status').textContent = `${user.username} is now ${updated.role}.`;
    announce(`${user.username} is now ${updated.role}.`);
  } catch (err) {
    select.value = user.role;
    $('admin-status').textContent = `Could not change ${user.username}'s role: ${err.message}`;
  } finally {
    button.disabled = false;
  }
}

async function createUser(event) {
  event.preventDefault();
  const form = event.currentTarget;
  clearFormErrors(form);
  formStatus(form, '');
  const body = {
    username: form.elements.username.value.trim(),
    email: form.elements.email.value.trim(),
    password: form.elements.password.value,
    role: form.elements.role.value,
  };
  if (!body.username || !body.email || !body.password) {
    showFormError(form, new ApiError('Fill in the username, email and password.', 0));
    return;
  }
  try {
    const user = await withBusy(form, () => api('POST', '/admin/users', body));
    form.reset();
    formStatus(form, `Created ${user.username} (${user.role}).`);
    search = user.username;
    $('admin-search').value = user.username;
    offset = 0;
    await loadUsers();
  } catch (err) {
    showFormError(form, err);
  }
}

export function wireAdmin() {
  let timer = null;
  $('admin-search-form').addEventListener('submit', (event) => {
    event.preventDefault();
    clearTimeout(timer);
    search = $('admin-search').value.trim();
    offset = 0;
    loadUsers();
  });
  $('admin-search').addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      search = $('admin-search').value.trim();
      offset = 0;
      loadUsers();
    }, 250);
  });
  $('admin-prev').addEventListener('click', () => {
    offset = Math.max(0, offset - PAGE);
    loadUsers();
  });
  $('admin-next').addEventListener('click', () => {
    offset += PAGE;
    loadUsers();
  });
  const form = $('create-user-form');
  clearErrorsOnInput(form);
  form.addEventListener('submit', createUser);
}
