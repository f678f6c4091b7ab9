// sd web console: a single page over the agent's own HTTP API (same origin).
//
// No framework: the page keeps a small model (node, nodes, deployments and their component
// trees), fetched with the bearer token, and renders it into keyed DOM elements that are
// updated in place (never rebuilt), so that element references, selections and the
// `data-changed-ms` stamps stay meaningful. A fetch-based Server-Sent Events reader
// (EventSource cannot send an Authorization header) triggers re-fetches; timers are a
// safety net. See the DOM contract in the brief: ids and data-* attributes are relied on
// by the browser tests.
'use strict';

(() => {
  // ---------------------------------------------------------------- constants, state

  const TOKEN_KEY = 'sd-token';
  const LOG_KEEP_CHARS = 64 * 1024;   // the log viewer keeps about the last 64 KiB
  const NODES_EVERY_MS = 2000;
  const ALL_EVERY_MS = 10000;
  const RECONNECT_MS = 1000;
  const ARM_MS = 4000;                // how long "Really terminate?" stays armed
  const MAX_EVENT_ROWS = 100;
  const ENDED = new Set(['finished', 'failed', 'terminated']);  // no uptime in these states

  // What the browser tests read.
  const sdConsole = (window.sdConsole = { firstRenderMs: null, eventsReceived: 0 });

  const S = {
    token: null,
    session: 0,             // bumped at every start and stop: work of an older one is dropped
    running: false,
    node: null,             // GET /v1/node
    nodes: [],              // GET /v1/nodes
    deployments: new Map(), // name -> summary
    status: new Map(),      // name -> {deployment, components, fetchedAt}
    timers: [],
    eventsCtrl: null,       // AbortController of the event stream
    log: null,              // {deployment, path, ctrl} of the open log
    source: 'console.sf',   // the deploy's `source`: the last uploaded file's name
    errorLines: new Set(),  // description lines with a diagnostic (gutter marks)
    currentLine: 0,         // the line selected from a diagnostic
    seenEvents: new Set(),  // node:seq of events already listed
  };

  // ---------------------------------------------------------------- small helpers

  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  /** Creates an element: `props.class`, `props.text`, anything else is an attribute. */
  function h(tag, props = {}, ...children) {
    const e = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (value == null) continue;
      if (key === 'class') e.className = value;
      else if (key === 'text') e.textContent = value;
      else e.setAttribute(key, value);
    }
    for (const child of children) if (child != null) e.append(child);
    return e;
  }

  /** Writes only what changed, so that unchanged nodes are left alone. */
  function setText(e, text) {
    text = String(text);
    if (e.textContent !== text) e.textContent = text;
  }
  function setAttr(e, name, value) {
    value = String(value);
    if (e.getAttribute(name) !== value) e.setAttribute(name, value);
  }

  /** Puts `child` right after `prev` (first when `prev` is null) unless it is there already. */
  function place(parent, child, prev) {
    const want = prev ? prev.nextSibling : parent.firstChild;
    if (child !== want) parent.insertBefore(child, want);
  }

  /** `"running"` or `{"failed": {...}}` -> the state's name. */
  function stateName(state) {
    if (typeof state === 'string') return state;
    if (state && typeof state === 'object') return Object.keys(state)[0] || 'unknown';
    return 'unknown';
  }

  function formatDuration(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    const pad = (n) => String(n).padStart(2, '0');
    if (s < 60) return `${s}s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m ${pad(s % 60)}s`;
    const hr = Math.floor(m / 60);
    if (hr < 24) return `${hr}h ${pad(m % 60)}m`;
    return `${Math.floor(hr / 24)}d ${hr % 24}h`;
  }

  const clock = (ms) => new Date(ms).toLocaleTimeString([], { hour12: false });

  // ---------------------------------------------------------------- API access

  /** An error answer of the API: `{error, details, diagnostics}`. */
  class ApiError extends Error {
    constructor(status, body) {
      super(body.error || `HTTP ${status}`);
      this.status = status;
      this.details = Array.isArray(body.details) ? body.details : [];
      this.diagnostics = Array.isArray(body.diagnostics) ? body.diagnostics : [];
    }
  }

  /** Thrown when the session that made a request has ended (401, new token): ignore it. */
  class StaleError extends Error {}

  async function errorFrom(res) {
    let text = '';
    try { text = await res.text(); } catch { /* the body is lost: the status will do */ }
    let body;
    try { body = JSON.parse(text); } catch { body = null; }
    if (!body || typeof body !== 'object') {
      body = { error: text.trim() || `${res.status} ${res.statusText}` };
    }
    return new ApiError(res.status, body);
  }

  /** A request with the token. Resolves with the Response when it is 2xx. */
  async function request(method, path, { body, signal } = {}) {
    const session = S.session;
    const headers = { Authorization: `Bearer ${S.token}` };
    const init = { method, headers, signal, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    if (session !== S.session) throw new StaleError('session ended');
    if (res.status === 401) {
      const err = await errorFrom(res);
      unauthorized(err.message);
      throw new StaleError(err.message);
    }
    if (!res.ok) throw await errorFrom(res);
    return res;
  }

  const getJSON = async (path) => (await request('GET', path)).json();

  /** Errors nobody needs to see: aborted requests and ended sessions. */
  const isQuiet = (e) => e instanceof StaleError || (e && e.name === 'AbortError');

  /** An error as text: its sentence and detail lines. */
  function errorText(e) {
    if (e instanceof ApiError) return [e.message, ...e.details].join('\n');
    return `could not reach the agent (${e && e.message ? e.message : e})`;
  }

  /** A background refresh failed: say so in the top bar (cleared by the next success). */
  function background(e) {
    if (isQuiet(e)) return;
    const banner = $('banner');
    banner.textContent = `refresh failed: ${errorText(e).split('\n')[0]}`;
    banner.hidden = false;
  }
  const clearBanner = () => { $('banner').hidden = true; };

  /**
   * Runs `fn` with at most one run in flight per key: a call while one runs asks for one
   * more run after it (however many calls came meanwhile). Resolves when no run is left.
   */
  const inflight = new Map();
  function coalesce(key, fn) {
    key = `${S.session}:${key}`;
    const current = inflight.get(key);
    if (current) {
      current.again = true;
      return current.promise;
    }
    const entry = { again: false, promise: null };
    const session = S.session;
    entry.promise = (async () => {
      try {
        do {
          entry.again = false;
          try { await fn(); } catch (e) { background(e); }
        } while (entry.again && session === S.session);
      } finally {
        inflight.delete(key);
      }
    })();
    inflight.set(key, entry);
    return entry.promise;
  }

  // ---------------------------------------------------------------- fetching the model

  /** One deployment's status into the model; a 404 means it is gone. */
  async function fetchStatus(name) {
    try {
      const status = await getJSON(`/v1/deployments/${enc(name)}`);
      status.fetchedAt = Date.now();
      S.status.set(name, status);
      if (status.deployment) S.deployments.set(name, status.deployment);
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        S.status.delete(name);
        S.deployments.delete(name);
        return;
      }
      throw e;
    }
  }

  /**
   * A deployment list into the model. `startedAt` is when it was asked for: what a status
   * fetched since then says is newer, and is kept (a deployment just created, say).
   */
  function applyList(list, startedAt) {
    const listed = new Set();
    for (const d of list) {
      listed.add(d.name);
      const status = S.status.get(d.name);
      if (!status || status.fetchedAt <= startedAt) S.deployments.set(d.name, d);
    }
    for (const name of [...S.deployments.keys()]) {
      if (listed.has(name)) continue;
      const status = S.status.get(name);
      if (status && status.fetchedAt > startedAt) continue;
      S.deployments.delete(name);
      S.status.delete(name);
    }
  }

  const refreshDeployment = (name) =>
    coalesce(`deployment:${name}`, async () => {
      await fetchStatus(name);
      renderDeployments();
    });

  const refreshList = () =>
    coalesce('list', async () => {
      const startedAt = Date.now();
      const list = await getJSON('/v1/deployments');
      applyList(list, startedAt);
      renderDeployments();
      // Trees not seen yet.
      await Promise.all(list.filter((d) => !S.status.has(d.name)).map((d) => refreshDeployment(d.name)));
    });

  const refreshNodes = () =>
    coalesce('nodes', async () => {
      S.nodes = await getJSON('/v1/nodes');
      renderNodes();
      clearBanner();
    });

  /** Everything: at start, every 10 s, and after the event stream reconnects. */
  const refreshAll = () =>
    coalesce('all', async () => {
      const startedAt = Date.now();
      const [node, nodes, list] = await Promise.all([
        getJSON('/v1/node'), getJSON('/v1/nodes'), getJSON('/v1/deployments'),
      ]);
      S.node = node;
      S.nodes = nodes;
      renderSelf();
      renderNodes();
      applyList(list, startedAt);
      await Promise.all(list.map((d) => refreshDeployment(d.name)));
      renderDeployments();
      if (sdConsole.firstRenderMs == null) sdConsole.firstRenderMs = performance.now();
      clearBanner();
    });

  // ---------------------------------------------------------------- event stream

  function setLive(state) {
    setAttr($('live'), 'data-state', state);
    setText($('live-text'), state);
  }

  /** Reads `/v1/events?follow=true` for as long as the session lasts, reconnecting. */
  async function eventLoop(session) {
    let attempts = 0;
    while (session === S.session) {
      setLive('connecting');
      const ctrl = new AbortController();
      S.eventsCtrl = ctrl;
      try {
        const res = await request('GET', '/v1/events?follow=true', { signal: ctrl.signal });
        setLive('connected');
        // Whatever happened while no stream was open is caught up on by a full refresh.
        if (attempts++ > 0) refreshAll();
        await readFrames(res.body, session, onFrame);
      } catch (e) {
        if (e instanceof StaleError || session !== S.session) return;
        if (!isQuiet(e)) console.debug('event stream:', e);
        attempts = Math.max(attempts, 1);
      }
      if (session !== S.session) return;
      setLive('offline');
      await sleep(RECONNECT_MS);
    }
  }

  /** Splits a text/event-stream body into frames and hands each parsed frame to `onFrame`. */
  async function readFrames(body, session, onFrameFn) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done || session !== S.session) return;
      buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n/g, '\n');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const frame = parseFrame(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (frame) onFrameFn(frame);
      }
    }
  }

  /** One SSE frame -> `{event, data}`; null for comments (`: keepalive`) and empty frames. */
  function parseFrame(text) {
    let event = 'message';
    const data = [];
    for (const line of text.split('\n')) {
      if (line === '' || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
    }
    return data.length ? { event, data: data.join('\n') } : null;
  }

  function onFrame(frame) {
    if (frame.event !== 'lifecycle' && frame.event !== 'message') return;
    let ev;
    try { ev = JSON.parse(frame.data); } catch { return; }
    if (!ev || typeof ev.deployment !== 'string') return;
    sdConsole.eventsReceived++;
    addEventRow(ev);
    // A deployment's own change, or one we do not know yet, changes the list.
    if (!ev.path || !S.deployments.has(ev.deployment)) refreshList();
    refreshDeployment(ev.deployment);
  }

  /** Lists an event in "Recent events" (newest first), once per node:seq. */
  function addEventRow(ev) {
    if (ev.seq) {
      const id = `${ev.node}:${ev.seq}`;
      if (S.seenEvents.has(id)) return;
      S.seenEvents.add(id);
      if (S.seenEvents.size > 5000) S.seenEvents.clear();
    }
    const list = $('events');
    const row = h('li', { title: ev.detail || null },
      h('span', { class: 'ev-time', text: ev.unix_ms ? clock(ev.unix_ms) : '' }),
      `${ev.deployment} ${ev.path || '(deployment)'} `,
      h('span', { class: 'ev-state', 'data-state': ev.state, text: ev.state || '' }),
      ev.node ? ` @${ev.node}` : '',
      ev.detail ? ` — ${ev.detail}` : '');
    list.prepend(row);
    while (list.children.length > MAX_EVENT_ROWS) list.lastChild.remove();
  }

  // ---------------------------------------------------------------- rendering: node, nodes

  function renderSelf() {
    const n = S.node;
    if (!n) return;
    setText($('self-node'), n.name);
    const info = [`v${n.version}`, `pid ${n.pid}`, `generation ${n.generation}`];
    if (n.vm_driver) info.push(`VMs: ${n.vm_driver}`);
    setText($('self-info'), info.join(' · '));
    document.title = `sd · ${n.name}`;
  }

  const NODE_CELLS = ['node-name', 'node-state', 'node-capacity', 'node-load',
    'node-accelerator', 'node-labels', 'node-version', 'node-generation', 'node-peer'];

  function renderNodes() {
    const tbody = $('nodes');
    const rows = new Map([...tbody.children].map((tr) => [tr.dataset.node, tr]));
    const listed = new Set();
    let prev = null;
    for (const n of S.nodes) {
      let tr = rows.get(n.name);
      if (!tr) {
        tr = h('tr', { 'data-node': n.name }, ...NODE_CELLS.map((c) => h('td', { class: c })));
        tr.querySelector('.node-name').textContent = n.name;
      }
      const cell = (c) => tr.querySelector(`.${c}`);
      setAttr(tr, 'data-state', n.state);
      tr.classList.toggle('self', !!n.is_self);
      setText(cell('node-state'), n.state);
      setText(cell('node-capacity'), `${n.vcpus} vCPU · ${n.memory_mib} MiB`);
      setText(cell('node-load'),
        `${n.vcpus - n.free_vcpus}/${n.vcpus} vCPU · ${n.memory_mib - n.free_memory_mib}/${n.memory_mib} MiB`);
      setText(cell('node-accelerator'), n.accelerator || '—');
      const labels = Object.entries(n.labels || {}).map(([k, v]) => `${k}=${v}`);
      const labelCell = cell('node-labels');
      if (labelCell.dataset.key !== labels.join('\n')) {
        labelCell.dataset.key = labels.join('\n');
        labelCell.replaceChildren(...labels.map((l) => h('span', { class: 'label', text: l })));
      }
      setText(cell('node-version'), n.version || '');
      setText(cell('node-generation'), n.generation ?? '');
      setText(cell('node-peer'), n.api_url ? `${n.peer_addr} · ${n.api_url}` : n.peer_addr || '');
      place(tbody, tr, prev);
      prev = tr;
      listed.add(n.name);
    }
    for (const [name, tr] of rows) if (!listed.has(name)) tr.remove();
  }

  // ---------------------------------------------------------------- rendering: deployments

  function renderDeployments() {
    const host = $('deployments');
    const boxes = new Map([...host.children].map((box) => [box.dataset.deployment, box]));
    const names = [...S.deployments.keys()].sort();
    let prev = null;
    for (const name of names) {
      const box = boxes.get(name) || createDeploymentBox(name);
      updateDeploymentBox(box, S.deployments.get(name), S.status.get(name));
      place(host, box, prev);
      prev = box;
    }
    for (const [name, box] of boxes) if (!S.deployments.has(name)) box.remove();
    $('deployments-empty').hidden = names.length > 0;
    if (S.log) markSelectedRow();  // rows created since the log was opened
    updateReconfigureLists();
  }

  function createDeploymentBox(name) {
    const ref = {
      state: h('span', { class: 'd-state' }),
      meta: h('span', { class: 'd-meta' }),
      terminate: h('button', { type: 'button', class: 'terminate', 'data-terminate': name, text: 'Terminate' }),
      reason: h('div', { class: 'd-reason' }),
      message: h('div', { class: 'd-message' }),
      tbody: h('tbody'),
    };
    const head = h('tr', {}, ...['Component', 'State', 'Node', 'PID', 'Uptime', 'Restarts', 'Settings', 'Last error']
      .map((t) => h('th', { text: t })));
    const box = h('section', { class: 'deployment', 'data-deployment': name },
      h('header', { class: 'd-head' }, h('h3', { class: 'd-name', text: name }), ref.state, ref.meta, ref.terminate),
      ref.reason, ref.message,
      h('table', { class: 'grid components' }, h('thead', {}, head), ref.tbody));
    box._ref = ref;
    return box;
  }

  function updateDeploymentBox(box, summary, status) {
    const ref = box._ref;
    const state = stateName(summary.state);
    setAttr(box, 'data-state', state);
    setText(ref.state, state);
    const meta = [`${summary.running}/${summary.components} running`, `root ${summary.root_node}`];
    if (summary.epoch) meta.push(`epoch ${summary.epoch}`);
    if (summary.source) meta.push(summary.source);
    if (summary.created_unix_ms) meta.push(`created ${new Date(summary.created_unix_ms).toLocaleString()}`);
    setText(ref.meta, meta.join(' · '));
    const reason = summary.state && summary.state.failed ? summary.state.failed.reason || '' : '';
    setText(ref.reason, reason);
    renderComponents(ref.tbody, status ? status.components || [] : []);
  }

  const COMPONENT_CELLS = ['c-name', 'c-state', 'c-node', 'c-pid', 'c-uptime', 'c-restarts', 'c-settings', 'c-error'];

  function renderComponents(tbody, components) {
    const rows = new Map([...tbody.children].map((tr) => [tr.dataset.path, tr]));
    // Paths that have children: the others are leaves (and so have a log to show).
    const parents = new Set(components.map((c) => c.path.slice(0, Math.max(0, c.path.lastIndexOf(':')))));
    const listed = new Set();
    let prev = null;
    for (const c of components) {
      const tr = rows.get(c.path) || createComponentRow(c.path);
      updateComponentRow(tr, c, !parents.has(c.path));
      place(tbody, tr, prev);
      prev = tr;
      listed.add(c.path);
    }
    for (const [path, tr] of rows) if (!listed.has(path)) tr.remove();
  }

  function createComponentRow(path) {
    const tr = h('tr', { class: 'component', 'data-path': path },
      ...COMPONENT_CELLS.map((c) => h('td', { class: c })));
    const segments = path.split(':');
    const name = tr.querySelector('.c-name');
    name.style.setProperty('--depth', String(segments.length - 1));
    name.append(h('span', { class: 'c-seg', text: segments[segments.length - 1], title: path }),
      h('span', { class: 'c-kind' }), h('span', { class: 'c-sup' }));
    tr._cells = Object.fromEntries(COMPONENT_CELLS.map((c) => [c, tr.querySelector(`.${c}`)]));
    return tr;
  }

  function updateComponentRow(tr, c, isLeaf) {
    const cells = tr._cells;
    const pid = c.pid == null ? '' : String(c.pid);
    const restarts = String(c.restarts ?? 0);
    setAttr(tr, 'data-state', c.state);
    setAttr(tr, 'data-node', c.node || '');
    setAttr(tr, 'data-pid', pid);
    setAttr(tr, 'data-restarts', restarts);
    setAttr(tr, 'data-kind', c.kind || '');
    // Stamp when this page first showed the component's current state, pid and restarts.
    const signature = `${c.state}|${pid}|${restarts}`;
    if (tr._signature !== signature) {
      tr._signature = signature;
      setAttr(tr, 'data-changed-ms', Date.now());
    }
    tr.classList.toggle('loggable', isLeaf || /Domain$/.test(c.kind || ''));

    setText(cells['c-name'].querySelector('.c-kind'), c.kind || '');
    const sup = c.supervision;
    setText(cells['c-name'].querySelector('.c-sup'),
      sup ? `${sup.strategy} ≤${sup.max_restarts}/${Math.round(sup.window_ms / 1000)}s` : '');
    setText(cells['c-state'], c.state);
    setText(cells['c-node'], c.node || '');
    setText(cells['c-pid'], pid);
    setText(cells['c-restarts'], restarts);
    setText(cells['c-error'], c.last_error || '');
    setAttr(cells['c-error'], 'title', c.last_error || '');

    tr._started = c.started_unix_ms;
    tr._state = c.state;
    updateUptime(tr);

    // "edit" controls, one per live-changeable attribute (rebuilt only when they change).
    const settings = Array.isArray(c.settings) ? c.settings : [];
    const key = JSON.stringify(settings);
    if (tr._settingsKey !== key) {
      tr._settingsKey = key;
      tr._settings = settings;
      cells['c-settings'].replaceChildren(...settings.map((s) => h('button', {
        type: 'button', class: 'edit-setting', 'data-setting-path': c.path, 'data-attribute': s.attribute,
        'data-value': s.value, title: `edit ${s.attribute}`, text: `${s.attribute}=${s.value} ✎`,
      })));
    }
  }

  function updateUptime(tr) {
    const started = tr._started;
    const text = started == null || ENDED.has(tr._state) ? '—' : formatDuration(Date.now() - started);
    setText(tr._cells['c-uptime'], text);
  }

  const tickUptimes = () => document.querySelectorAll('#deployments tr.component').forEach(updateUptime);

  // ---------------------------------------------------------------- deployment actions

  function onDeploymentsClick(event) {
    const terminate = event.target.closest('button.terminate');
    if (terminate) return onTerminate(terminate);
    const edit = event.target.closest('button.edit-setting');
    if (edit) return onEditSetting(edit);
    const row = event.target.closest('tr.component.loggable');
    if (row) openLog(row.closest('[data-deployment]').dataset.deployment, row.dataset.path);
  }

  function disarm(button) {
    clearTimeout(button._timer);
    button.classList.remove('armed');
    button.textContent = 'Terminate';
  }

  /** Two clicks: "Terminate" arms the button for 4 s, "Really terminate?" does it. */
  async function onTerminate(button) {
    if (button.disabled) return;
    if (!button.classList.contains('armed')) {
      button.classList.add('armed');
      button.textContent = 'Really terminate?';
      button._timer = setTimeout(() => disarm(button), ARM_MS);
      return;
    }
    clearTimeout(button._timer);
    const name = button.dataset.terminate;
    const message = button.closest('[data-deployment]')._ref.message;
    button.disabled = true;
    button.textContent = 'Terminating…';
    try {
      await request('DELETE', `/v1/deployments/${enc(name)}`);
      setText(message, '');
      refreshList();
      refreshDeployment(name);
    } catch (e) {
      if (!isQuiet(e)) setText(message, errorText(e));
    } finally {
      button.disabled = false;
      disarm(button);
    }
  }

  // ---------------------------------------------------------------- log viewer

  /** Keeps about the last LOG_KEEP_CHARS of `text`, from a line start when one is near. */
  function keepTail(text) {
    if (text.length <= LOG_KEEP_CHARS) return text;
    let cut = text.length - LOG_KEEP_CHARS;
    const newline = text.indexOf('\n', cut);
    if (newline >= 0 && newline - cut < 1024) cut = newline + 1;
    return text.slice(cut);
  }

  function setLogText(text) {
    const pre = $('log');
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 24;
    pre.textContent = text;
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }

  function setLogStatus(text, isError = false) {
    const status = $('log-status');
    status.textContent = text;
    status.classList.toggle('error-text', isError);
  }

  function markSelectedRow() {
    document.querySelectorAll('#deployments tr.component.selected').forEach((tr) => tr.classList.remove('selected'));
    if (!S.log) return;
    const box = document.querySelector(`#deployments [data-deployment="${CSS.escape(S.log.deployment)}"]`);
    const row = box && box.querySelector(`tr.component[data-path="${CSS.escape(S.log.path)}"]`);
    if (row) row.classList.add('selected');
  }

  /** Stops the open log's request or stream; `clear` also empties the viewer. */
  function closeLog(clear = false) {
    if (S.log) S.log.ctrl.abort();
    S.log = null;
    markSelectedRow();
    if (clear) {
      $('log').textContent = '';
      $('log-path').textContent = 'click a domain to see its output';
      setLogStatus('');
    }
  }

  /** Shows a domain's log: its content now or, with #log-follow, streamed. */
  async function openLog(deployment, path) {
    closeLog();
    const ctrl = new AbortController();
    const log = (S.log = { deployment, path, ctrl });
    const follow = $('log-follow').checked;
    $('log-path').textContent = `${deployment} · ${path}`;
    $('log').textContent = '';
    setLogStatus(follow ? 'connecting…' : 'loading…');
    markSelectedRow();
    const current = () => S.log === log;
    const url = `/v1/deployments/${enc(deployment)}/logs?path=${enc(path)}${follow ? '&follow=true' : ''}`;
    try {
      const res = await request('GET', url, { signal: ctrl.signal });
      if (!follow) {
        const text = await res.text();
        if (!current()) return;
        setLogText(keepTail(text));
        $('log').scrollTop = $('log').scrollHeight;
        setLogStatus(text.length > LOG_KEEP_CHARS
          ? `showing the last ~64 KiB of ${text.length} characters` : text ? '' : '(empty)');
        return;
      }
      setLogStatus('following…');
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let text = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (!current()) return;
        if (done) break;
        text = keepTail(text + decoder.decode(value, { stream: true }));
        setLogText(text);
      }
      setLogText(keepTail(text + decoder.decode()));
      setLogStatus('the stream ended (the deployment ended, or the agent is stopping)');
    } catch (e) {
      if (!isQuiet(e) && current()) setLogStatus(errorText(e), true);
    }
  }

  // ---------------------------------------------------------------- deploy panel

  const description = () => $('deploy-description');

  /** Redraws the line-number gutter (only when the line count or the marks changed). */
  function updateGutter() {
    const text = description().value;
    let lines = 1;
    for (let i = text.indexOf('\n'); i >= 0; i = text.indexOf('\n', i + 1)) lines++;
    const gutter = $('deploy-gutter');
    const key = `${lines}|${[...S.errorLines].join(',')}|${S.currentLine}`;
    if (gutter.dataset.key !== key) {
      gutter.dataset.key = key;
      const parts = [];
      for (let n = 1; n <= lines; n++) {
        const classes = [S.errorLines.has(n) ? 'err' : '', S.currentLine === n ? 'current' : ''].join(' ').trim();
        parts.push(classes ? `<span class="${classes}">${n}</span>` : String(n));
      }
      gutter.innerHTML = parts.join('\n');  // numbers and fixed class names only
    }
    syncGutter();
  }
  const syncGutter = () => { $('deploy-gutter').scrollTop = description().scrollTop; };

  /** Selects line `line` of the description and scrolls it into view. */
  function selectLine(line) {
    const ta = description();
    const text = ta.value;
    let start = 0;
    for (let n = 1; n < line; n++) {
      const newline = text.indexOf('\n', start);
      if (newline < 0) { start = text.length; break; }
      start = newline + 1;
    }
    let end = text.indexOf('\n', start);
    if (end < 0) end = text.length;
    ta.focus();
    ta.setSelectionRange(start, end);
    const lineHeight = parseFloat(getComputedStyle(ta).lineHeight) || 16;
    ta.scrollTop = Math.max(0, (line - 1) * lineHeight - ta.clientHeight / 3);
    S.currentLine = line;
    updateGutter();
  }

  function clearDeployOutput() {
    $('deploy-result').textContent = '';
    $('deploy-error-summary').textContent = '';
    $('deploy-errors').replaceChildren();
    S.errorLines.clear();
    S.currentLine = 0;
    updateGutter();
  }

  /** Whether a diagnostic's file is another file than the text in the editor (an include). */
  function isForeign(file) {
    if (!file) return false;
    const base = (p) => p.split('/').pop();
    return file !== S.source && base(file) !== base(S.source);
  }

  function showDeployError(e) {
    const list = $('deploy-errors');
    const items = [];
    if (e instanceof ApiError && e.diagnostics.length) {
      $('deploy-error-summary').textContent = e.message;
      for (const d of e.diagnostics) {
        const foreign = isForeign(d.file);
        const where = `${d.file ? `${d.file} ` : ''}line ${d.line}, column ${d.column}`;
        items.push(h('li', {
          'data-line': d.line, 'data-column': d.column, class: foreign ? 'foreign' : null,
          title: foreign ? `in ${d.file}, not in the text above` : 'select this line',
          text: `${where}: ${d.message}`,
        }));
        if (!foreign) S.errorLines.add(Number(d.line));
      }
    } else if (e instanceof ApiError && e.details.length) {
      $('deploy-error-summary').textContent = e.message;
      for (const line of e.details) items.push(h('li', { text: line }));
    } else {
      items.push(h('li', { text: e instanceof ApiError ? e.message : errorText(e) }));
    }
    list.replaceChildren(...items);
    updateGutter();
  }

  /** Runs a deploy-panel request with its buttons disabled. */
  async function deployAction(run) {
    const buttons = [$('deploy-validate'), $('deploy-submit')];
    clearDeployOutput();
    buttons.forEach((b) => { b.disabled = true; });
    try {
      await run();
    } catch (e) {
      if (!isQuiet(e)) showDeployError(e);
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  }

  const validate = () => deployAction(async () => {
    const res = await request('POST', '/v1/validate', {
      body: { description: description().value, source: S.source },
    });
    const answer = await res.json();
    $('deploy-result').textContent = `Valid: ${answer.components} component${answer.components === 1 ? '' : 's'}.`;
  });

  const deploy = () => deployAction(async () => {
    const name = $('deploy-name').value.trim();
    const res = await request('POST', '/v1/deployments', {
      body: { name, description: description().value, source: S.source },
    });
    const summary = await res.json();
    $('deploy-result').textContent = `Deployed ${summary.name} (${stateName(summary.state)}).`;
    if (summary.name) S.deployments.set(summary.name, summary);
    renderDeployments();
    refreshList();
    refreshDeployment(summary.name || name);
  });

  async function onFileChosen() {
    const file = $('deploy-file').files[0];
    if (!file) return;
    description().value = await file.text();
    S.source = file.name;
    description().scrollTop = 0;
    clearDeployOutput();
  }

  // ---------------------------------------------------------------- reconfigure panel

  /** The components of a deployment that have live settings. */
  function settingsOf(deployment) {
    const status = S.status.get(deployment);
    return status ? (status.components || []).filter((c) => c.settings && c.settings.length) : [];
  }

  function fillDatalist(id, values) {
    const list = $(id);
    const key = values.join('\n');
    if (list.dataset.key === key) return;
    list.dataset.key = key;
    list.replaceChildren(...values.map((v) => h('option', { value: v })));
  }

  /** Suggestions for the reconfigure inputs, from what the page knows now. */
  function updateReconfigureLists() {
    fillDatalist('reconfigure-deployments', [...S.deployments.keys()].sort());
    const deployment = $('reconfigure-deployment').value.trim();
    const components = settingsOf(deployment);
    fillDatalist('reconfigure-paths', components.map((c) => c.path));
    const path = $('reconfigure-path').value.trim();
    const component = components.find((c) => c.path === path);
    const settings = component ? component.settings : [];
    fillDatalist('reconfigure-attributes', settings.map((s) => s.attribute));
    const attribute = $('reconfigure-attribute').value.trim();
    const setting = settings.find((s) => s.attribute === attribute);
    $('reconfigure-value').placeholder = setting ? `now ${setting.value}` : '';
  }

  function onEditSetting(button) {
    $('reconfigure-deployment').value = button.closest('[data-deployment]').dataset.deployment;
    $('reconfigure-path').value = button.dataset.settingPath;
    $('reconfigure-attribute').value = button.dataset.attribute;
    $('reconfigure-value').value = button.dataset.value ?? '';
    updateReconfigureLists();
    const result = $('reconfigure-result');
    result.textContent = '';
    result.removeAttribute('data-outcome');
    $('reconfigure-value').focus();
    $('reconfigure-value').select();
  }

  async function reconfigure() {
    const result = $('reconfigure-result');
    const show = (outcome, text) => { result.dataset.outcome = outcome; result.textContent = text; };
    const deployment = $('reconfigure-deployment').value.trim();
    const body = {
      path: $('reconfigure-path').value.trim(),
      attribute: $('reconfigure-attribute').value.trim(),
      value: $('reconfigure-value').value.trim(),
    };
    if (!deployment) return show('error', 'Choose a deployment.');
    result.removeAttribute('data-outcome');
    result.textContent = 'Applying…';
    $('reconfigure-submit').disabled = true;
    try {
      const res = await request('POST', `/v1/deployments/${enc(deployment)}/reconfigure`, { body });
      const r = await res.json();
      const nodes = r.nodes && r.nodes.length ? ` (committed on ${r.nodes.join(', ')})` : '';
      show('ok', `${r.attribute} of ${r.path}: ${r.previous} → ${r.value}${nodes}`);
      refreshDeployment(deployment);
    } catch (e) {
      if (!isQuiet(e)) show('error', errorText(e));
    } finally {
      $('reconfigure-submit').disabled = false;
    }
  }

  // ---------------------------------------------------------------- token, start, stop

  function showTokenForm(message) {
    const error = $('token-error');
    error.textContent = message || '';
    error.hidden = !message;
    $('token-overlay').hidden = false;
    $('token-form').hidden = false;
    $('token-input').value = '';
    $('token-input').focus();
  }

  function hideTokenForm() {
    $('token-overlay').hidden = true;
    $('token-form').hidden = true;
  }

  /** A 401: forget the token, stop everything and ask for another one. */
  function unauthorized(message) {
    if (!S.running) return;
    stop();
    S.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    showTokenForm(`The agent refused the token: ${message || 'unauthorized'}`);
  }

  function start() {
    stop();
    S.session++;
    S.running = true;
    hideTokenForm();
    const session = S.session;
    setLive('connecting');
    S.timers.push(
      setInterval(refreshNodes, NODES_EVERY_MS),
      setInterval(refreshAll, ALL_EVERY_MS),
      setInterval(tickUptimes, 1000));
    // First everything, then the event stream (opened even if the first load failed).
    refreshAll().finally(() => {
      if (session !== S.session) return;
      loadRecentEvents();
      eventLoop(session);
    });
  }

  function stop() {
    S.session++;
    S.running = false;
    S.timers.forEach(clearInterval);
    S.timers = [];
    if (S.eventsCtrl) S.eventsCtrl.abort();
    S.eventsCtrl = null;
    closeLog();
    setLive('offline');
  }

  /** Fills "Recent events" from `GET /v1/events` (newest last); quiet when it fails. */
  async function loadRecentEvents() {
    try {
      const events = await getJSON('/v1/events');
      if (Array.isArray(events)) events.forEach(addEventRow);
    } catch { /* only a convenience */ }
  }

  /** The token: from `#token=...` (then out of the URL), else from sessionStorage. */
  function initialToken() {
    // Parsed by hand: URLSearchParams would turn a '+' of the token into a space.
    const match = /(?:^#|&)token=([^&]*)/.exec(location.hash);
    let fromUrl = match ? match[1] : '';
    try { fromUrl = decodeURIComponent(fromUrl); } catch { /* not %-encoded: use it as it is */ }
    if (fromUrl) {
      sessionStorage.setItem(TOKEN_KEY, fromUrl);
      history.replaceState(null, '', location.pathname + location.search);
      return fromUrl;
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function init() {
    $('token-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const token = $('token-input').value.trim();
      if (!token) return;
      S.token = token;
      sessionStorage.setItem(TOKEN_KEY, token);
      start();
    });

    $('deployments').addEventListener('click', onDeploymentsClick);

    $('deploy-form').addEventListener('submit', (e) => { e.preventDefault(); deploy(); });
    $('deploy-validate').addEventListener('click', validate);
    $('deploy-file').addEventListener('change', onFileChosen);
    description().addEventListener('input', updateGutter);
    description().addEventListener('scroll', syncGutter);
    $('deploy-errors').addEventListener('click', (e) => {
      const item = e.target.closest('li[data-line]');
      if (item && !item.classList.contains('foreign')) selectLine(Number(item.dataset.line));
    });

    $('reconfigure-form').addEventListener('submit', (e) => { e.preventDefault(); reconfigure(); });
    for (const id of ['reconfigure-deployment', 'reconfigure-path', 'reconfigure-attribute']) {
      $(id).addEventListener('input', updateReconfigureLists);
      $(id).addEventListener('change', updateReconfigureLists);
    }

    $('log-follow').addEventListener('change', () => { if (S.log) openLog(S.log.deployment, S.log.path); });
    $('log-close').addEventListener('click', () => closeLog(true));

    updateGutter();
    S.token = initialToken();
    if (S.token) start();
    else showTokenForm('');
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
