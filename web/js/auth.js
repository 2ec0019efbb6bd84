// Signing in and out: the login and register forms, entering the app, and
// what happens when a session ends.

import { ApiError, api, refreshSession, setToken, state, whenSignedOut } from './api.js';
import {
  $, clearErrorsOnInput, clearFormErrors, hideNotice, setConn, showFormError, showNotice, showView, withBusy,
} from './dom.js';
import { closeRoom, refreshRooms, userChannel } from './rooms.js';
import { route } from './main.js';

export async function logIn(username, password) {
  const res = await api('POST', '/auth/login', { username, password });
  setToken(res.access_token, res.expires_in);
  await enterApp();
}

export function showAuth() {
  showView('auth-view');
  $('account').hidden = true;
  $('conn').hidden = true;
  document.body.classList.remove('is-admin', 'is-guest');
  setConn('idle', 'Not connected');
}

function forget() {
  closeRoom();
  userChannel.stop();
  setToken(null);
  state.me = null;
  state.rooms = [];
}

/** The session no longer works (expired, revoked, account gone): back to the login form. */
export function signedOut(why) {
  forget();
  showAuth();
  showNotice(`You have been signed out: ${why}. Please log in again.`);
  $('login-username').focus();
}

export async function logOut() {
  try {
    await api('POST', '/auth/logout');
  } catch {
    // The token is forgotten here either way.
  }
  forget();
  hideNotice();
  showAuth();
  $('login-username').focus();
}

/** Signed in: who am I, then the screen the address asks for. */
export async function enterApp() {
  state.me = await api('GET', '/users/me');
  renderMe();
  $('account').hidden = false;
  $('conn').hidden = false;
  if (!state.session) setConn('idle', 'No room open');
  hideNotice();
  if (state.me.role !== 'guest') {
    userChannel.start();
    await refreshRooms();
  }
  await route();
}

/** The top bar's name, avatar and admin link. */
export function renderMe() {
  const me = state.me;
  $('me-name').textContent = me.username;
  const img = $('me-avatar');
  img.src = me.avatar_url || `/users/${me.id}/avatar`;
  img.hidden = false;
  document.body.classList.toggle('is-admin', me.role === 'admin');
  document.body.classList.toggle('is-guest', me.role === 'guest');
  $('nav-admin').hidden = me.role !== 'admin';
}

/** A tab that starts without a token may still hold the refresh cookie: stay signed in. */
export async function resume() {
  if (!state.token && !(await refreshSession())) return false;
  await enterApp();
  return true;
}

export function wireAuth() {
  whenSignedOut(signedOut);
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

  for (const id of ['login-form', 'register-form']) clearErrorsOnInput($(id));
  $('logout').addEventListener('click', logOut);
  $('notice-close').addEventListener('click', hideNotice);
}
