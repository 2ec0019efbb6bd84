// The account page: the avatar (with a preview before it is uploaded; a file
// too large or not an image is said plainly), email and password (the
// current password required), logging out everywhere, and deleting the
// account, which asks for the password.

import { ApiError, api, optional, setToken, state } from './api.js';
import {
  $, announce, clearErrorsOnInput, clearFormErrors, formStatus, showFormError, showNotice, withBusy,
} from './dom.js';
import { renderMe, showAuth } from './auth.js';
import { closeRoom, userChannel } from './rooms.js';

const MAX_AVATAR_BYTES = 1024 * 1024;
const AVATAR_TYPES = ['image/png', 'image/jpeg', 'image/webp'];

/** Fills the page from who is signed in. */
export function showAccount() {
  const me = state.me;
  $('account-username').textContent = me.username;
  $('account-email').textContent = me.email || '';
  $('account-role').textContent = me.role;
  $('account-avatar').src = me.avatar_url || `/users/${me.id}/avatar`;
  for (const id of ['avatar-form', 'email-form', 'password-form', 'delete-account-form']) {
    const form = $(id);
    clearFormErrors(form);
    formStatus(form, '');
  }
  $('delete-account-form').hidden = true;
  $('delete-account-start').hidden = false;
  $('sessions-status').textContent = '';
  $('account-title').focus();
}

function clearPreview() {
  $('avatar-preview').hidden = true;
  $('avatar-preview').removeAttribute('src');
}

/** Says what is wrong with a file before sending it: the server would say the same (413, 415). */
function checkFile(file) {
  if (!file) return new ApiError('Choose an image first.', 0);
  if (file.size > MAX_AVATAR_BYTES) {
    return new ApiError(`That image is too large (${Math.ceil(file.size / 1024)} KiB): avatars are at most 1 MiB.`, 413);
  }
  if (file.type && !AVATAR_TYPES.includes(file.type)) {
    return new ApiError(`That file (${file.type}) is not an image roomcast takes: use PNG, JPEG or WebP.`, 415);
  }
  return null;
}

function onAvatarChosen() {
  const form = $('avatar-form');
  clearFormErrors(form);
  formStatus(form, '');
  clearPreview();
  const file = $('avatar-file').files[0];
  if (!file) return;
  const problem = checkFile(file);
  if (problem) {
    showFormError(form, problem);
    return;
  }
  // A data: URL, which the page's Content-Security-Policy allows for images (blob: it does not).
  const reader = new FileReader();
  reader.addEventListener('load', () => {
    if ($('avatar-file').files[0] !== file) return; // another file was chosen meanwhile
    const img = $('avatar-preview');
    img.src = String(reader.result);
    img.hidden = false;
    formStatus(form, 'This is how your new avatar will look. Upload it to use it.');
  });
  reader.readAsDataURL(file);
}

async function uploadAvatar(event) {
  event.preventDefault();
  const form = event.currentTarget;
  clearFormErrors(form);
  const file = $('avatar-file').files[0];
  // The server is the judge of size and type; this only spares an upload we know it refuses.
  const problem = file ? null : checkFile(file);
  if (problem) {
    showFormError(form, problem);
    return;
  }
  const body = new FormData();
  body.append('file', file);
  try {
    const res = await withBusy(form, () => api('PUT', '/users/me/avatar', body));
    const url = (res && res.avatar_url) || `/users/${state.me.id}/avatar`;
    // A new version in the URL: browsers fetch the new picture (without one, a cache-buster).
    state.me.avatar_url = /[?&]v=/.test(url) ? url : `${url}${url.includes('?') ? '&' : '?'}t=${Date.now()}`;
    renderMe();
    $('account-avatar').src = state.me.avatar_url;
    clearPreview();
    form.reset();
    formStatus(form, 'Avatar updated.');
    announce('Avatar updated.');
  } catch (err) {
    if (err.status === 413) err.message = `That image is too large: ${err.message}.`;
    else if (err.status === 415) err.message = `That file is not an image roomcast can use: ${err.message}.`;
    showFormError(form, err);
  }
}

async function changeEmail(event) {
  event.preventDefault();
  const form = event.currentTarget;
  clearFormErrors(form);
  formStatus(form, '');
  const email = form.elements.email.value.trim();
  const current = form.elements.current_password.value;
  if (!email || !current) {
    showFormError(form, new ApiError('Enter the new email and your current password.', 0));
    return;
  }
  try {
    state.me = { ...state.me, ...(await withBusy(form, () => api('PATCH', '/users/me', { email, current_password: current }))) };
    form.reset();
    $('account-email').textContent = state.me.email || email;
    formStatus(form, `Email changed to ${state.me.email || email}.`);
  } catch (err) {
    showFormError(form, err);
  }
}

async function changePassword(event) {
  event.preventDefault();
  const form = event.currentTarget;
  clearFormErrors(form);
  formStatus(form, '');
  const current = form.elements.current_password.value;
  const password = form.elements.password.value;
  if (!current || !password) {
    showFormError(form, new ApiError('Enter your current password and the new one.', 0));
    return;
  }
  try {
    await withBusy(form, () => api('PATCH', '/users/me', { password, current_password: current }));
    form.reset();
    formStatus(form, 'Password changed.');
  } catch (err) {
    showFormError(form, err);
  }
}

/** Every session of this account ends, this one too. */
async function logOutEverywhere() {
  const button = $('logout-everywhere');
  button.disabled = true;
  try {
    const done = await optional('POST', '/auth/logout-all');
    if (done === null) {
      $('sessions-status').textContent = 'This server cannot end your other sessions yet.';
      return;
    }
    closeRoom();
    userChannel.stop();
    setToken(null);
    state.me = null;
    showAuth();
    showNotice('You have been logged out everywhere.');
    $('login-username').focus();
  } catch (err) {
    $('sessions-status').textContent = `Could not log out everywhere: ${err.message}`;
  } finally {
    button.disabled = false;
  }
}

function startDelete() {
  $('delete-account-start').hidden = true;
  const form = $('delete-account-form');
  form.hidden = false;
  clearFormErrors(form);
  $('delete-password').focus();
}

function cancelDelete() {
  const form = $('delete-account-form');
  form.reset();
  form.hidden = true;
  $('delete-account-start').hidden = false;
  $('delete-account-start').focus();
}

async function deleteAccount(event) {
  event.preventDefault();
  const form = event.currentTarget;
  clearFormErrors(form);
  const current = form.elements.current_password.value;
  if (!current) {
    showFormError(form, new ApiError('Enter your password to delete your account.', 0));
    return;
  }
  // Taken now: the server closes this account's sockets before it answers,
  // and their closing may sign the page out (state.me gone) first.
  const name = state.me.username;
  try {
    await withBusy(form, () => api('DELETE', '/users/me', { current_password: current }));
  } catch (err) {
    showFormError(form, err);
    return;
  }
  closeRoom();
  userChannel.stop();
  setToken(null);
  state.me = null;
  form.reset();
  showAuth();
  showNotice(`The account ${name} was deleted. Its messages stay, shown as from a deleted user.`);
  $('login-username').focus();
}

export function wireAccount() {
  for (const id of ['avatar-form', 'email-form', 'password-form', 'delete-account-form']) clearErrorsOnInput($(id));
  $('avatar-file').addEventListener('change', onAvatarChosen);
  $('avatar-form').addEventListener('submit', uploadAvatar);
  $('email-form').addEventListener('submit', changeEmail);
  $('password-form').addEventListener('submit', changePassword);
  $('logout-everywhere').addEventListener('click', logOutEverywhere);
  $('delete-account-start').addEventListener('click', startDelete);
  $('delete-account-cancel').addEventListener('click', cancelDelete);
  $('delete-account-form').addEventListener('submit', deleteAccount);
}
