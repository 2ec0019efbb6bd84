// DOM helpers shared by every screen: element building, notices, form
// errors, the live region, the connection indicator and which screen shows.

export const $ = (id) => document.getElementById(id);

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

/** A v4 UUID; crypto.randomUUID needs a secure context, getRandomValues does not. */
export function uuid() {
  if (window.crypto && typeof crypto.randomUUID === 'function' && window.isSecureContext) {
    return crypto.randomUUID();
  }
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export const utf8Bytes = (text) => new TextEncoder().encode(text).length;

export function formatTime(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const sameDay = d.toDateString() === new Date().toDateString();
  return sameDay
    ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : d.toLocaleString([], { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
}

/** A user's picture: decorative beside their name (alt=""), named when it stands alone. */
export function avatar(user, { size = 'small', alt = '' } = {}) {
  const url = (user && (user.avatar_url || (user.id && `/users/${user.id}/avatar`))) || null;
  const initial = () => el('span', {
    class: `avatar avatar-${size} avatar-none`,
    'aria-hidden': 'true',
    text: ((user && user.username) || '?').slice(0, 1).toUpperCase(),
  });
  if (!url) return initial();
  const img = el('img', { class: `avatar avatar-${size}`, src: url, alt, width: size === 'large' ? 96 : 24, height: size === 'large' ? 96 : 24, decoding: 'async' });
  // An image this session may not fetch (a guest has no cookie): the initial instead.
  img.addEventListener('error', () => img.replaceWith(initial()), { once: true });
  return img;
}

// ---------------------------------------------------------------- notices and forms

export function showNotice(text) {
  $('notice-text').textContent = text;
  $('notice').hidden = false;
}

export function hideNotice() {
  $('notice').hidden = true;
  $('notice-text').textContent = '';
}

/** Polite news for screen readers (and nobody else). */
export function announce(text) {
  const live = $('live');
  live.append(el('p', { text }));
  while (live.childElementCount > 5) live.firstElementChild.remove();
}

export function clearFormErrors(form) {
  const box = form.querySelector('.form-error');
  if (box) {
    box.hidden = true;
    box.textContent = '';
  }
  for (const input of form.querySelectorAll('[aria-invalid]')) input.removeAttribute('aria-invalid');
  for (const note of form.querySelectorAll('.field-error')) note.remove();
}

/** Shows an error in a form: the problem's detail, and each field's message beside its input. */
export function showFormError(form, err) {
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

/** A stale error goes as soon as the user changes what it was about. */
export function clearErrorsOnInput(form) {
  form.addEventListener('input', () => {
    const box = form.querySelector('.form-error');
    if (box && !box.hidden) clearFormErrors(form);
  });
}

export async function withBusy(form, work) {
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

/** A short-lived success line in a form's status (role=status) element. */
export function formStatus(form, text) {
  const status = form.querySelector('.form-status');
  if (status) status.textContent = text;
}

// ---------------------------------------------------------------- connection state

export function setConn(kind, text) {
  $('conn').dataset.state = kind;
  $('conn-text').textContent = text;
  $('reconnect-now').hidden = kind !== 'reconnecting';
}

// ---------------------------------------------------------------- screens

const VIEWS = ['auth-view', 'chat-view', 'account-view', 'admin-view', 'echo-view', 'guest-view'];

/** Shows one screen of `<main>` and hides the others. */
export function showView(id) {
  for (const view of VIEWS) {
    const node = $(view);
    if (node) node.hidden = view !== id;
  }
  document.body.dataset.view = id.replace(/-view$/, '');
}

export function currentView() {
  return VIEWS.find((id) => $(id) && !$(id).hidden) || null;
}
