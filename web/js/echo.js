// The echo page: a socket to `/echo` that sends each frame back, or relays
// it through the server's upstream (`ECHO_UPSTREAM_URL`) when one is set,
// and the transcripts of past sessions from `/echo/history`.

import { api, state } from './api.js';
import { $, announce, el, formatTime } from './dom.js';

let ws = null;
let info = null; // the answer of GET /echo_ws: {url, mode?}

const MODES = {
  echo: 'Echo: the server sends each frame straight back.',
  relay: 'Upstream relay: the server passes each frame to its upstream and sends back what that answers.',
};

export async function showEcho() {
  renderSocketState();
  await Promise.all([loadInfo(), loadHistory()]);
  $('echo-title').focus();
}

export function leaveEcho() {
  disconnect();
}

async function loadInfo() {
  try {
    info = await api('GET', '/echo_ws');
  } catch (err) {
    $('echo-mode').textContent = `Cannot reach the echo channel: ${err.message}`;
    return;
  }
  $('echo-mode').textContent = MODES[info.mode]
    || 'The server echoes each frame, or relays it through its upstream when one is configured.';
  $('echo-view').dataset.mode = info.mode || '';
}

function renderSocketState() {
  const open = Boolean(ws && ws.readyState === WebSocket.OPEN);
  $('echo-connect').hidden = Boolean(ws);
  $('echo-disconnect').hidden = !ws;
  $('echo-input').disabled = !open;
  $('echo-send').disabled = !open;
  $('echo-state').textContent = ws ? (open ? 'Connected' : 'Connecting…') : 'Not connected';
  $('echo-state').dataset.state = ws ? (open ? 'connected' : 'connecting') : 'idle';
}

function line(dir, text) {
  const label = dir === 'in' ? 'You sent' : dir === 'out' ? 'Back' : '';
  return el('li', { class: `echo-line echo-${dir}` }, label ? el('span', { class: 'echo-dir', text: `${label}:` }) : null, el('span', { class: 'echo-text', text }));
}

function connect() {
  if (ws) return;
  if (!info) {
    loadInfo().then(() => info && connect());
    return;
  }
  // The login cookie authenticates the socket; a URL built for this host keeps the scheme right behind a proxy.
  const target = new URL(info.url, location.href);
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const url = `${scheme}//${location.host}${target.pathname}`;
  $('echo-log').replaceChildren();
  const socket = new WebSocket(url);
  ws = socket;
  renderSocketState();
  socket.onopen = () => {
    if (ws !== socket) return;
    renderSocketState();
    announce('Echo channel connected.');
    $('echo-input').focus();
  };
  socket.onmessage = (event) => {
    if (ws !== socket) return;
    $('echo-log').append(line('out', typeof event.data === 'string' ? event.data : '(binary frame)'));
  };
  socket.onclose = (event) => {
    if (ws !== socket) return;
    ws = null;
    renderSocketState();
    const why = event.code === 1000 || event.code === 1005 ? 'Disconnected.' : `Closed (${event.code}${event.reason ? `: ${event.reason}` : ''}).`;
    $('echo-log').append(line('note', why));
    // The server saves the transcript as the socket closes.
    setTimeout(loadHistory, 300);
  };
}

function disconnect() {
  const socket = ws;
  if (!socket) return;
  if (socket.readyState <= WebSocket.OPEN) socket.close(1000, 'done');
}

function sendFrame(event) {
  event.preventDefault();
  const input = $('echo-input');
  const text = input.value;
  if (!text || !ws || ws.readyState !== WebSocket.OPEN) return;
  ws.send(text);
  $('echo-log').append(line('in', text));
  input.value = '';
  input.focus();
}

async function loadHistory() {
  if (!state.me) return;
  let sessions;
  try {
    sessions = await api('GET', '/echo/history');
  } catch (err) {
    $('echo-history-status').textContent = `Could not load past sessions: ${err.message}`;
    return;
  }
  $('echo-history-status').textContent = sessions.length ? '' : 'No sessions yet.';
  $('echo-history').replaceChildren(...sessions.map((s) => {
    const frames = Array.isArray(s.frames) ? s.frames : [];
    return el(
      'li',
      { 'data-id': s.id },
      el(
        'details',
        {},
        el('summary', {}, el('time', { datetime: s.started_at, text: formatTime(s.started_at) }), ` · ${frames.length} frame${frames.length === 1 ? '' : 's'}`),
        el('ol', { class: 'echo-log' }, ...frames.map((f) => line(f.dir === 'in' ? 'in' : 'out', String(f.text)))),
      ),
    );
  }));
}

export function wireEcho() {
  $('echo-connect').addEventListener('click', connect);
  $('echo-disconnect').addEventListener('click', disconnect);
  $('echo-form').addEventListener('submit', sendFrame);
  $('echo-refresh').addEventListener('click', loadHistory);
}
