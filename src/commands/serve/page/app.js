// The chat page of `agentq serve`. It lists sessions, opens one, and builds the
// conversation from the session's event stream alone: the stream replays the whole log
// and then goes live, so a reload, a reconnect or a second tab shows the same page.
//
// Safety: every piece of text that comes from the model, a user or a tool enters the
// page through textContent or createTextNode, never innerHTML, insertAdjacentHTML or
// outerHTML, so nothing an agent writes can become markup or script here.
'use strict';

// ---- Pure helpers: no DOM, so node can load and test them. ----

function humanDuration(ms) {
  if (typeof ms !== 'number' || !Number.isFinite(ms)) return '';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  return `${Math.floor(s / 60)}m ${String(Math.floor(s % 60)).padStart(2, '0')}s`;
}

// The `.usage` footer: status (only when not plain success), tokens, cost, duration.
function footerText(p) {
  const parts = [];
  if (p.status && p.status !== 'completed') {
    parts.push(p.stop_reason && p.stop_reason !== p.status ? `${p.status} (${p.stop_reason})` : p.status);
  }
  const u = (p.usage && p.usage.execution) || {};
  // `~`: agentq estimated the tokens because the provider reported none.
  parts.push(`${u.estimated ? '~' : ''}${u.input ?? 0} in / ${u.output ?? 0} out tokens`);
  // The server writes the priced cost beside the usage (cost_usd.execution); the serve
  // contract also names usage.execution.cost_usd, so either is read.
  const cost = p.cost_usd && typeof p.cost_usd === 'object' ? p.cost_usd.execution : u.cost_usd;
  if (typeof cost === 'number') parts.push(`$${cost.toFixed(4)}`);
  if (p.duration_ms != null) parts.push(humanDuration(p.duration_ms));
  return parts.join(' · ');
}

function retryText(p) {
  return `retrying in ${p.delay_ms} ms (${p.http_status ?? p.error ?? 'error'})`;
}

function toolResultText(p) {
  return `${p.success ? '✓' : '✗'} ${humanDuration(p.duration_ms)}`;
}

function statusText(status) {
  if (status === 'processing') return 'processing…';
  if (status === 'waiting') return 'waiting for approval';
  return String(status ?? '');
}

// A waiting call's arguments as the approval panel shows them: indented JSON, or the
// cut text itself when the event carries them truncated.
function argumentsText(p) {
  if (p.arguments_truncated && typeof p.arguments === 'string') return `${p.arguments} …`;
  return p.arguments === undefined ? '' : JSON.stringify(p.arguments, null, 2);
}

// What `approval.decided` says, for the panel: approved or denied, and by whom.
function decisionText(p) {
  const who = p.by && p.by.user;
  if (who === 'approval_timeout') return 'denied: no decision in time (approval_timeout)';
  const verdict = p.decision === 'approved' ? 'approved' : 'denied';
  const by = who ? ` by ${who}` : '';
  return p.decision !== 'approved' && p.reason ? `${verdict}${by}: ${p.reason}` : `${verdict}${by}`;
}

// A transcript message's content as text (a string, or a list of text parts).
function contentText(c) {
  if (typeof c === 'string') return c;
  if (Array.isArray(c)) return c.map((part) => (typeof part === 'string' ? part : part?.text ?? '')).join('');
  return c == null ? '' : JSON.stringify(c);
}

// Full user texts by message_id, from `GET /api/sessions/{id}/messages`.
function userTexts(lines) {
  const texts = new Map();
  for (const line of Array.isArray(lines) ? lines : []) {
    // Each line is flat (`{role, content, message_id, …}`), as `session messages --json`.
    const m = line && (line.message || line);
    if (m && m.role === 'user' && line.message_id && !texts.has(line.message_id)) {
      texts.set(line.message_id, contentText(m.content));
    }
  }
  return texts;
}

function eventsUrl(id, after) {
  const base = `/api/sessions/${encodeURIComponent(id)}/events`;
  return after > 0 ? `${base}?after=${after}` : base;
}

function sessionFromHash(hash) {
  const m = /^#\/sessions\/([^/?#]+)$/.exec(hash || '');
  if (!m) return null;
  try { return decodeURIComponent(m[1]); } catch { return null; }
}

function sessionLabel(s) {
  return s.title || String(s.id || '').slice(0, 8) || 'session';
}

// Reconnect delays: 1 s, 2 s, 4 s, … at most 30 s.
function backoff(tries) {
  return Math.min(30000, 1000 * 2 ** Math.min(tries, 5));
}

function errorText(err) {
  if (err && err.code && err.message) return `${err.message} (${err.code})`;
  return String((err && err.message) || err);
}

// ---- The page. ----

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

const page = {
  sessionId: null,
  es: null,
  lastSeq: 0, // the highest seq applied in the open session: anything at or below it is a repeat
  shutdownSeen: false,
  retries: 0,
  retryTimer: null,
  users: new Map(), // message_id -> .msg.user
  answers: new Map(), // message_id -> {node, spans, text, status, steps, tools, footer, error}
  execs: new Map(), // execution_id -> message_id
  running: new Set(), // executions started and not finished
  approvals: new Map(), // `${execution_id} ${tool_call_id}` -> {node, label, actions, decision, executionId}
  texts: new Map(), // message_id -> full user text (ids are unique, so kept across sessions)
  fetching: false,
  refetch: false,
  next: null,
};

class ApiError extends Error {
  constructor(code, message, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError('network', `cannot reach the server: ${e.message}`, 0);
  }
  const raw = await res.text();
  let data = null;
  try { data = raw ? JSON.parse(raw) : null; } catch { /* not JSON: shown as text below */ }
  if (!res.ok) {
    const e = data && data.error;
    throw new ApiError(e?.code || `http_${res.status}`, e?.message || raw || res.statusText, res.status);
  }
  return data;
}

function showError(err) {
  $('error').textContent = errorText(err);
  $('error').parentElement.hidden = false;
}

function clearError() {
  $('error').textContent = '';
  $('error').parentElement.hidden = true;
}

function setConnection(state) {
  const node = $('connection');
  node.dataset.state = state;
  node.textContent = { live: 'live', connecting: 'connecting…', offline: 'offline' }[state];
}

// ---- Sessions and agents. ----

async function loadAgents() {
  const agents = (await api('GET', '/api/agents')) || [];
  const select = $('agent');
  select.replaceChildren();
  for (const a of agents) {
    const option = el('option', null, a.valid === false ? `${a.name} (invalid)` : a.name);
    option.value = a.name;
    select.append(option);
  }
  const usable = agents.find((a) => a.valid !== false);
  if (usable) select.value = usable.name;
}

async function loadSessions(before) {
  const query = new URLSearchParams({ limit: '50' });
  if (before) query.set('before', before);
  const data = await api('GET', `/api/sessions?${query}`);
  const list = $('sessions');
  if (!before) list.replaceChildren();
  for (const s of data.sessions || []) {
    const li = el('li');
    li.dataset.sessionId = s.id;
    const open = el('button', 'open');
    open.type = 'button';
    open.append(el('span', 'title', sessionLabel(s)), el('span', 'meta', `${s.agent} · ${s.status} · ${s.messages ?? 0} msg`));
    li.append(open);
    list.append(li);
  }
  page.next = data.next ?? null;
  $('more-sessions').hidden = !page.next;
  markCurrent();
}

// The list's counts change as messages are queued and answered: refreshed once the
// events stop coming for a moment (a replay of a long log would otherwise ask once per
// execution), and only when it shows the first page (a reload would drop the others).
let sessionsRefresh = null;
function refreshSessionsSoon() {
  if (sessionsRefresh || page.next === undefined || $('sessions').children.length > 50) return;
  sessionsRefresh = setTimeout(() => {
    sessionsRefresh = null;
    loadSessions().catch(() => {});
  }, 500);
}

function markCurrent() {
  for (const li of $('sessions').children) {
    const current = li.dataset.sessionId === page.sessionId;
    li.classList.toggle('current', current);
    if (current) li.firstElementChild?.setAttribute('aria-current', 'true');
    else li.firstElementChild?.removeAttribute('aria-current');
  }
}

// Opening goes through the hash so that a reload (or a shared link) reopens the session.
function go(id) {
  const hash = `#/sessions/${enc(id)}`;
  if (location.hash === hash) openSession(id);
  else location.hash = hash;
}

function openFromHash() {
  const id = sessionFromHash(location.hash);
  if (id) openSession(id);
}

function openSession(id) {
  if (id === page.sessionId) return;
  closeStream();
  Object.assign(page, { sessionId: id, lastSeq: 0, retries: 0, shutdownSeen: false });
  for (const map of [page.users, page.answers, page.execs, page.running, page.approvals]) map.clear();
  const conv = $('conversation');
  conv.replaceChildren();
  conv.dataset.sessionId = id;
  $('session-title').textContent = id;
  updateStop();
  markCurrent();
  connect();
  api('GET', `/api/sessions/${enc(id)}`).then((show) => {
    const s = (show && show.session) || {};
    if (page.sessionId === id) $('session-title').textContent = `${sessionLabel({ id, ...s })}${s.agent ? ` · ${s.agent}` : ''}`;
  }).catch((err) => {
    showError(err);
    // No such session: stop asking for its events.
    if (err.status === 404 && page.sessionId === id) { closeStream(); setConnection('offline'); }
  });
}

// ---- The event stream. ----

function connect() {
  const id = page.sessionId;
  clearTimeout(page.retryTimer);
  const es = new EventSource(eventsUrl(id, page.lastSeq));
  page.es = es;
  setConnection('connecting');
  es.onopen = () => {
    page.shutdownSeen = false;
    page.retries = 0;
    setConnection('live');
  };
  es.onerror = () => {
    if (page.es !== es) return;
    if (es.readyState === EventSource.CLOSED) {
      // EventSource gave up (an HTTP error answer): try again ourselves, from the last seq.
      setConnection('offline');
      page.retryTimer = setTimeout(() => { if (page.sessionId === id && page.es === es) connect(); }, backoff(page.retries++));
    } else {
      // Reconnecting on its own; after a shutdown the server is known to be gone.
      setConnection(page.shutdownSeen ? 'offline' : 'connecting');
    }
  };
  es.addEventListener('shutdown', () => {
    if (page.es !== es) return;
    page.shutdownSeen = true;
    setConnection('offline');
  });
  for (const type of Object.keys(HANDLERS)) {
    es.addEventListener(type, (message) => {
      if (page.es !== es) return;
      let event;
      try { event = JSON.parse(message.data); } catch { return; }
      applyEvent(event);
    });
  }
}

function closeStream() {
  clearTimeout(page.retryTimer);
  if (page.es) page.es.close();
  page.es = null;
}

// Applies one event of the open session at most once; returns whether it was new.
function applyEvent(event) {
  if (!event || typeof event.seq !== 'number' || event.seq <= page.lastSeq) return false;
  page.lastSeq = event.seq;
  const handler = HANDLERS[event.type];
  if (!handler) return true;
  const conv = $('conversation');
  const atBottom = conv.scrollHeight - conv.scrollTop - conv.clientHeight < 48;
  try {
    handler(event.payload || {}, event);
  } catch (err) {
    console.error('agentq: cannot show event', event.seq, err);
  }
  if (atBottom) conv.scrollTop = conv.scrollHeight;
  return true;
}

function userMessage(messageId, preview) {
  let node = page.users.get(messageId);
  if (!node) {
    node = el('div', 'msg user');
    node.dataset.messageId = messageId;
    node.append(el('div', 'text'));
    page.users.set(messageId, node);
    $('conversation').append(node);
  }
  const full = page.texts.get(messageId);
  node.firstElementChild.textContent = full ?? preview ?? '';
  node.classList.toggle('preview', full == null);
}

function fillUserTexts() {
  for (const messageId of page.users.keys()) {
    if (page.texts.has(messageId)) userMessage(messageId);
  }
}

// Fetches the transcript for the full user texts; calls made while one is in flight
// are folded into one more fetch, so a replayed log costs two requests, not hundreds.
async function refreshMessages() {
  if (page.fetching) { page.refetch = true; return; }
  page.fetching = true;
  try {
    do {
      page.refetch = false;
      const id = page.sessionId;
      const lines = await api('GET', `/api/sessions/${enc(id)}/messages`);
      if (id !== page.sessionId) continue;
      for (const [messageId, text] of userTexts(lines)) page.texts.set(messageId, text);
      fillUserTexts();
    } while (page.refetch);
  } catch (err) {
    showError(err);
  } finally {
    page.fetching = false;
  }
}

function answer(messageId) {
  let a = page.answers.get(messageId);
  if (a) return a;
  const node = el('div', 'msg agent');
  node.dataset.messageId = messageId;
  const spans = el('div', 'spans');
  const text = el('div', 'text');
  node.append(spans, text);
  const question = page.users.get(messageId);
  // Right after its question, even when later messages were queued before it started.
  if (question) question.after(node);
  else $('conversation').append(node);
  a = { node, spans, text, status: null, steps: new Map(), tools: new Map(), checks: new Map(), footer: null, error: null };
  page.answers.set(messageId, a);
  return a;
}

function answerFor(event, p) {
  const messageId = page.execs.get(event.execution_id) ?? p.message_id;
  return messageId ? answer(messageId) : null;
}

function stepSpan(a, n) {
  let span = a.steps.get(n);
  if (!span) {
    span = el('span', 'span step');
    a.steps.set(n, span);
    a.spans.append(span);
  }
  return span;
}

function toolSpan(a, p) {
  let span = a.tools.get(p.tool_call_id);
  if (!span) {
    span = el('span', 'span tool');
    span.dataset.callId = p.tool_call_id;
    span.append(el('span', 'name', p.tool_name), el('span', 'args'));
    a.tools.set(p.tool_call_id, span);
    a.spans.append(span);
  }
  return span;
}

// A done-when check's span, one per check and round: a failed round is followed by
// the model's next answer, then by the checks again.
function checkSpan(a, p) {
  const key = `${p.name}\u0000${p.round}`;
  let span = a.checks.get(key);
  if (!span) {
    span = el('span', 'span check');
    span.append(el('span', 'name', `check ${p.name}`));
    a.checks.set(key, span);
    a.spans.append(span);
  }
  return span;
}

// A call that waits for a person (`approval = "required"`): the tool, its arguments
// whole, and Approve / Deny (with an optional reason) calling the API's routes of those
// names; `approval.decided` then replaces the buttons with the decision. The DOM the
// browser tests select on: `.approval[data-call-id][data-state]`, `.approval-args`,
// `button.approve`, `button.deny`, `input.reason`, `.approval-decision`.
function approvalPanel(a, executionId, p) {
  const key = `${executionId} ${p.tool_call_id}`;
  let panel = page.approvals.get(key);
  if (panel) return panel;
  // What the model said before the call stays above the panel, as before a step.
  if (a.text.textContent.trim()) {
    a.text.before(el('p', 'said', a.text.textContent));
    a.text.textContent = '';
  }
  const node = el('div', 'approval');
  node.dataset.callId = p.tool_call_id;
  node.dataset.state = 'waiting';
  node.setAttribute('role', 'group');
  node.setAttribute('aria-label', `Approval of ${p.tool_name}`);
  const head = el('p', 'approval-head');
  const label = el('span', 'label', 'Waiting for approval: ');
  head.append(label, el('span', 'name', p.tool_name));
  if (p.server) head.append(document.createTextNode(` (${p.server})`));
  head.append(el('span', 'call', p.tool_call_id));
  const args = el('pre', 'approval-args', argumentsText(p));
  node.append(head, args);
  if (p.deny_at) node.append(el('p', 'approval-note', `denied by itself at ${p.deny_at}`));
  const actions = el('div', 'approval-actions');
  const approve = el('button', 'approve', 'Approve');
  const reason = el('input', 'reason');
  reason.type = 'text';
  reason.placeholder = 'Reason (optional)';
  reason.setAttribute('aria-label', 'Reason for denying (optional)');
  const deny = el('button', 'deny', 'Deny');
  approve.type = deny.type = 'button';
  actions.append(approve, reason, deny);
  const decision = el('p', 'approval-decision');
  decision.hidden = true;
  node.append(actions, decision);
  const id = page.sessionId;
  const decide = async (action, body) => {
    approve.disabled = deny.disabled = reason.disabled = true;
    try {
      await api('POST', `/api/sessions/${enc(id)}/${action}`, body);
      clearError();
    } catch (err) {
      showError(err);
      approve.disabled = deny.disabled = reason.disabled = false;
    }
  };
  approve.addEventListener('click', () => decide('approve', { call_id: p.tool_call_id }));
  deny.addEventListener('click', () => {
    const why = reason.value.trim();
    decide('deny', why ? { call_id: p.tool_call_id, reason: why } : { call_id: p.tool_call_id });
  });
  a.text.before(node);
  panel = { node, label, actions, decision, executionId };
  page.approvals.set(key, panel);
  return panel;
}

// The panel's end: its buttons go, what became of the call stays.
function settleApproval(panel, state, text) {
  panel.node.dataset.state = state;
  panel.label.textContent = 'Approval asked for: ';
  panel.actions.remove();
  panel.decision.textContent = text;
  panel.decision.hidden = false;
}

function updateStop() {
  $('stop').hidden = page.running.size === 0;
}

// An execution's events act on its answer; those of an execution never seen are skipped.
const onAnswer = (fn) => (p, event) => {
  const a = answerFor(event, p);
  if (a) fn(a, p);
};

const HANDLERS = {
  'message.queued'(p) {
    userMessage(p.message_id, p.content_preview);
  },
  'execution.started'(p, event) {
    const resumed = page.answers.has(p.message_id) || p.attempt > 1;
    const a = answer(p.message_id);
    if (event.execution_id) page.execs.set(event.execution_id, p.message_id);
    if (resumed) {
      a.node.classList.remove('done');
      a.footer?.remove();
      a.spans.append(el('span', 'span resumed', `resumed (attempt ${p.attempt})`));
      // The interrupted step runs again from the checkpoint and streams its text anew.
      a.text.replaceChildren();
    }
    page.running.add(event.execution_id ?? p.message_id);
    updateStop();
    refreshMessages();
  },
  'agent.status': onAnswer((a, p) => {
    if (!a.status) a.spans.prepend((a.status = el('span', 'span status')));
    a.status.textContent = statusText(p.status);
    a.status.dataset.status = p.status;
  }),
  'agent.step.started': onAnswer((a, p) => {
    // What the model said before calling its tools stays, muted, above the answer;
    // the text that streams from here on is this step's.
    if (a.text.textContent.trim()) {
      const said = document.createElement('p');
      said.className = 'said';
      said.textContent = a.text.textContent;
      a.text.before(said);
    }
    a.text.textContent = '';
    const span = stepSpan(a, p.step_number);
    span.textContent = `step ${p.step_number}`;
    span.classList.remove('done');
  }),
  'agent.step.completed': onAnswer((a, p) => {
    const span = stepSpan(a, p.step_number);
    span.textContent = `step ${p.step_number} done`;
    span.title = humanDuration(p.duration_ms);
    span.classList.add('done');
  }),
  'agent.tool.started': onAnswer((a, p) => {
    const span = toolSpan(a, p);
    span.classList.remove('ok', 'err');
    span.querySelectorAll('.result, .error').forEach((n) => n.remove());
    span.querySelector('.args').textContent = p.args_summary ?? (p.args !== undefined ? JSON.stringify(p.args) : '');
  }),
  'agent.tool.completed': onAnswer((a, p) => {
    const span = toolSpan(a, p);
    span.querySelectorAll('.result, .error').forEach((n) => n.remove());
    span.classList.add(p.success ? 'ok' : 'err');
    span.append(el('span', 'result', toolResultText(p)));
    if (!p.success && p.error) span.append(el('span', 'error', p.error));
  }),
  'approval.requested'(p, event) {
    const executionId = event.execution_id;
    if (!executionId) return;
    onAnswer((a) => approvalPanel(a, executionId, p))(p, event);
  },
  'approval.decided'(p, event) {
    const panel = page.approvals.get(`${p.execution_id ?? event.execution_id} ${p.tool_call_id}`);
    if (panel && panel.node.dataset.state === 'waiting') {
      settleApproval(panel, p.decision === 'approved' ? 'approved' : 'denied', decisionText(p));
    }
  },
  'agent.check.started': onAnswer((a, p) => {
    checkSpan(a, p).classList.remove('ok', 'err');
  }),
  'agent.check.completed': onAnswer((a, p) => {
    const span = checkSpan(a, p);
    span.querySelectorAll('.result, .error').forEach((n) => n.remove());
    span.classList.add(p.success ? 'ok' : 'err');
    span.append(el('span', 'result', toolResultText(p)));
    if (!p.success && p.output_summary) span.append(el('span', 'error', p.output_summary));
  }),
  'provider.retry': onAnswer((a, p) => {
    const span = el('span', 'span retry', retryText(p));
    if (p.error) span.title = p.error;
    a.spans.append(span);
  }),
  'agent.stream.chunk': onAnswer((a, p) => {
    if (p.content) a.text.append(document.createTextNode(p.content));
  }),
  'agent.message.completed': onAnswer((a, p) => {
    // The whole answer replaces the chunks (the minimal preset sends none); an answer
    // valid against the agent's [output] schema shows as its JSON, indented.
    const structured = p.structured !== undefined;
    a.text.textContent = structured ? JSON.stringify(p.structured, null, 2) : p.response ?? '';
    a.text.classList.toggle('structured', structured);
    a.node.classList.toggle('empty', Boolean(p.empty) || !String(p.response ?? '').trim());
    a.node.classList.add('done');
  }),
  'execution.finished'(p, event) {
    page.running.delete(event.execution_id ?? p.message_id);
    updateStop();
    // A call still waiting when its execution ended (cancelled, say) waits no more.
    for (const panel of page.approvals.values()) {
      if (panel.executionId === event.execution_id && panel.node.dataset.state === 'waiting') {
        settleApproval(panel, 'ended', 'not decided: the execution ended');
      }
    }
    refreshMessages();
    refreshSessionsSoon();
    onAnswer((a) => {
      a.footer?.remove();
      a.error?.remove();
      a.error = p.error ? el('p', 'error', p.error) : null;
      if (a.error) a.node.append(a.error);
      a.footer = el('div', 'usage', footerText(p));
      a.footer.dataset.status = p.status;
      a.node.append(a.footer);
      a.node.classList.add('done');
    })(p, event);
  },
};

// ---- Forms and buttons. ----

async function newSession(e) {
  e.preventDefault();
  const agent = $('agent').value;
  if (!agent) { showError('No agent to start a session with: add one under agents/ in the home.'); return; }
  $('new-session').disabled = true;
  try {
    const created = await api('POST', '/api/sessions', { agent });
    clearError();
    go(created.id ?? created.session?.id);
    $('message').focus();
    await loadSessions();
  } catch (err) {
    showError(err);
  } finally {
    $('new-session').disabled = false;
  }
}

async function send(e) {
  e.preventDefault();
  const box = $('message');
  const content = box.value;
  if ($('send').disabled || !content.trim()) return;
  if (!page.sessionId) { showError('Open or create a session first.'); return; }
  const id = page.sessionId;
  $('send').disabled = true;
  try {
    const sent = await api('POST', `/api/sessions/${enc(id)}/messages`, { content });
    // Our own message shows at once and in full, before (or instead of) its queued preview.
    page.texts.set(sent.message_id, content);
    if (page.sessionId === id) userMessage(sent.message_id);
    box.value = '';
    clearError();
  } catch (err) {
    showError(err);
  } finally {
    $('send').disabled = false;
    box.focus();
  }
}

function boot() {
  $('new-form').addEventListener('submit', newSession);
  $('send-form').addEventListener('submit', send);
  $('message').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $('send-form').requestSubmit();
    }
  });
  $('sessions').addEventListener('click', (e) => {
    const li = e.target.closest('li[data-session-id]');
    if (li) go(li.dataset.sessionId);
  });
  $('more-sessions').addEventListener('click', () => loadSessions(page.next).catch(showError));
  $('stop').addEventListener('click', () => {
    if (page.sessionId) api('POST', `/api/sessions/${enc(page.sessionId)}/cancel`, {}).catch(showError);
  });
  $('error-dismiss').addEventListener('click', clearError);
  $('sessions-toggle').addEventListener('click', (e) => {
    const open = e.currentTarget.getAttribute('aria-expanded') !== 'true';
    e.currentTarget.setAttribute('aria-expanded', String(open));
    e.currentTarget.textContent = open ? 'Hide sessions' : 'Show sessions';
    $('sidebar-body').classList.toggle('collapsed', !open);
  });
  window.addEventListener('hashchange', openFromHash);
  loadAgents().catch(showError);
  loadSessions().catch(showError);
  openFromHash();
}

if (typeof module === 'object' && module.exports) {
  module.exports = { humanDuration, footerText, retryText, toolResultText, statusText, argumentsText, decisionText, contentText, userTexts, eventsUrl, sessionFromHash, sessionLabel, backoff, errorText };
} else if (document.readyState === 'loading') {
  document.addEventListener('DOMContentLoaded', boot);
} else {
  boot();
}
