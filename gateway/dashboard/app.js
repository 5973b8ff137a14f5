// The gateway's live dashboard: plain JavaScript, no build step, nothing fetched from elsewhere.
//
// The job list is List pages (history, newest first) merged with one server-sent event stream (the
// WatchJobs stream of the tenant): every message carries a job revision, and a row only ever moves
// forward (a revision older than the one shown is ignored), so the two sources can race freely.
// The stream's event ids are WatchJobs resume tokens: a reconnect (the browser's own, with
// Last-Event-ID, or ours, with ?resume=) continues where the stream was cut, without gaps.
// Filters live in the address (?state=RUNNING,QUEUED&route=echo&label=k=v&job=<id>).
'use strict';

(() => {
  const STATES = ['QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED'];
  const API = '/api/dashboard';
  const TAIL = 160; // characters of a transcript shown in the list
  const $ = (id) => document.getElementById(id);

  let config = { auth: false, tenant: null, routes: [], heartbeatSeconds: 10 };
  let filter = { states: [], route: '', labels: [], since: '', tenant: '' }; // tenant: '' = the signed-in one
  const SINCE = { '15m': 900, '1h': 3600, '24h': 86400, '7d': 604800 };
  const whisperRoutes = new Set();

  const jobs = new Map(); // id -> row entry (the jobs shown)
  const seen = new Map(); // id -> the newest revision seen, shown or not
  let ids = []; // the ids shown, newest first (ids sort by creation)
  let generation = 0; // bumped by every reset: answers to older requests are dropped
  let nextPageToken = '';

  let source = null;
  let lastEventId = '';
  let lastMessageAt = 0;
  let reconnectTimer = 0;
  let backoff = 500;

  let detail = null; // { id, lastRev, loading }

  // -- HTTP ----------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      const error = (body && body.error) || {};
      super(error.message || `HTTP ${status}`);
      this.status = status;
      this.reason = error.reason || '';
    }
  }

  async function call(method, path, body) {
    const init = { method, headers: { Accept: 'application/json' }, credentials: 'same-origin', cache: 'no-store' };
    if (method !== 'GET') init.headers['X-Dashboard'] = '1';
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const error = new ApiError(response.status, data);
      if (response.status === 401 && config.auth && path !== `${API}/session`) showLogin();
      throw error;
    }
    return data;
  }

  // -- filters in the address ------------------------------------------------------------------

  function readFilter() {
    const q = new URLSearchParams(location.search);
    const states = (q.get('state') || '').split(',').map((s) => s.trim().toUpperCase()).filter((s) => STATES.includes(s));
    const labels = [];
    for (const raw of q.getAll('label')) {
      const at = raw.indexOf('=');
      if (at > 0) labels.push([raw.slice(0, at), raw.slice(at + 1)]);
    }
    const since = SINCE[q.get('since') || ''] ? q.get('since') : '';
    return { states, route: q.get('route') || '', labels, since, tenant: q.get('tenant') || '' };
  }

  function query(f, withStates) {
    const q = new URLSearchParams();
    if (withStates && f.states.length) q.set('state', f.states.join(','));
    if (f.route) q.set('route', f.route);
    for (const [k, v] of f.labels) q.append('label', `${k}=${v}`);
    if (f.since) q.set('since', f.since);
    if (f.tenant) q.set('tenant', f.tenant);
    return q;
  }

  // A job's path, for the tenant viewed (an operator's view of another tenant: ?tenant=).
  function scoped(path) {
    return filter.tenant ? `${path}${path.includes('?') ? '&' : '?'}tenant=${encodeURIComponent(filter.tenant)}` : path;
  }

  // Whether this browser may cancel, retry and delete the jobs it views (its own: always; another
  // tenant's: when the gateway's [auth.operators] gives it actions).
  function canAct() {
    if (!filter.tenant) return true;
    const viewed = (config.tenants || []).find((t) => t.name === filter.tenant);
    return Boolean(viewed && viewed.actions);
  }

  function pageUrl(f, jobId) {
    const q = query(f, true);
    if (jobId) q.set('job', jobId);
    const s = q.toString();
    return location.pathname + (s ? `?${s}` : '');
  }

  function matches(job) {
    if (filter.states.length && !filter.states.includes(job.state)) return false;
    if (filter.route && job.route !== filter.route) return false;
    for (const [k, v] of filter.labels) if (!job.labels || job.labels[k] !== v) return false;
    if (filter.since && job.createTime < Date.now() / 1000 - SINCE[filter.since]) return false;
    return true;
  }

  function showFilterForm() {
    for (const box of document.querySelectorAll('#states input')) box.checked = filter.states.includes(box.value);
    $('route').value = filter.route;
    if ($('route').value !== filter.route) { // a route this gateway does not know (any more)
      const option = document.createElement('option');
      option.value = option.textContent = filter.route;
      $('route').append(option);
      $('route').value = filter.route;
    }
    $('labels').value = filter.labels.map(([k, v]) => `${k}=${v}`).join(', ');
    $('since').value = filter.since;
    $('tenant-select').value = filter.tenant;
  }

  function filterFromForm() {
    const states = [...document.querySelectorAll('#states input:checked')].map((b) => b.value);
    const labels = [];
    for (const part of $('labels').value.split(',')) {
      const text = part.trim();
      if (!text) continue;
      const at = text.indexOf('=');
      if (at > 0) labels.push([text.slice(0, at).trim(), text.slice(at + 1).trim()]);
    }
    return { states, route: $('route').value, labels, since: $('since').value, tenant: $('tenant-select').value };
  }

  // -- formatting ------------------------------------------------------------------------------

  // Writes a cell's text only when it changes: every write, even of the same text, makes the
  // browser lay the table out again, and 200 rows changing at once made that most of the page's work.
  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function age(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
    return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
  }

  function when(seconds) {
    return seconds == null ? '—' : new Date(seconds * 1000).toLocaleString();
  }

  function percent(job) {
    return `${Math.round((job.progress || 0) * 100)}%`;
  }

  function transcriptOf(segments) {
    return segments.map((s) => s.text).join('').trim();
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // -- rows ------------------------------------------------------------------------------------

  function insertAt(id) {
    let lo = 0;
    let hi = ids.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (ids[mid] > id) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  // Rows are built only for the jobs that can be seen. Up to VIRTUAL_AT jobs every job has its row,
  // in order (a change costs its row alone). Past that the list is windowed: rows of one fixed height
  // (tbody.virtual), built for the jobs in view and OVERSCAN around them, two spacer rows standing in
  // for the rest, so 10,000 jobs cost the DOM of some fifty; a job out of view is kept as data (its
  // entry) and drawn when scrolled to. Back under UNVIRTUAL_AT every row is built again.
  const VIRTUAL_AT = 1000;
  const UNVIRTUAL_AT = 800;
  const OVERSCAN = 20;
  let virtual = false;
  let rowHeight = 0; // measured once per switch to the window
  let windowFrame = 0;
  let windowIds = []; // the ids whose rows are in the table, in order (virtual)
  const padTop = el('tr', 'pad');
  const padBottom = el('tr', 'pad');
  for (const pad of [padTop, padBottom]) {
    const td = el('td');
    td.colSpan = 9;
    pad.append(td);
  }

  function addRow(job) {
    const entry = {
      job, row: null, segments: [], loading: false, reload: false, loadedRev: 0, shown: {},
    };
    const index = insertAt(job.id);
    ids.splice(index, 0, job.id);
    jobs.set(job.id, entry);
    if (!virtual && ids.length > VIRTUAL_AT) {
      setVirtual(true);
    } else if (virtual) {
      scheduleWindow();
    } else {
      build(entry);
      const before = index + 1 < ids.length ? jobs.get(ids[index + 1]).row : null;
      $('rows').insertBefore(entry.row, before); // (apply renders it)
    }
    return entry;
  }

  // The row's DOM, empty: render fills it once it is in the table (so that what observes the table
  // sees the row show its revision).
  function build(entry) {
    const row = el('tr');
    row.dataset.id = entry.job.id;
    const cell = (label, className) => {
      const td = el('td', className);
      td.dataset.label = label;
      row.append(td);
      return td;
    };
    const idCell = cell('Job', 'id');
    const open = el('button', 'link mono', entry.job.id.slice(-12));
    open.type = 'button';
    open.title = `${entry.job.id} — details`;
    open.dataset.action = 'open';
    idCell.append(open);
    const routeCell = cell('Route', 'route');
    routeCell.textContent = entry.job.route;
    // What changes while a job runs sits in a box of fixed size (see .slot), so a change is laid out
    // inside its box alone, not across the whole table.
    const slot = (td, kind) => td.appendChild(el('span', `slot ${kind}`));
    const badge = el('span', 'badge');
    slot(cell('State', 'state'), 'state').append(badge);
    const bar = el('progress');
    bar.max = 1;
    const pct = el('span', 'pct');
    slot(cell('Progress', 'progress'), 'meter').append(bar, pct);
    const ageCell = slot(cell('Age', 'age'), 'age');
    const queueCell = cell('Queue', 'queue');
    const labelsCell = cell('Labels', 'labels');
    const infoCell = cell('Output', 'info');
    const actionsCell = cell('', 'actions');
    const cancel = el('button', 'danger small', 'Cancel');
    cancel.type = 'button';
    cancel.dataset.action = 'cancel';
    actionsCell.append(cancel);
    Object.assign(entry, { row, badge, bar, pct, ageCell, queueCell, labelsCell, infoCell, cancel, shown: {} });
  }

  function drop(entry) {
    if (!entry.row) return;
    entry.row.remove();
    Object.assign(entry, {
      row: null, badge: null, bar: null, pct: null, ageCell: null, queueCell: null, labelsCell: null, infoCell: null, cancel: null,
    });
  }

  function removeRow(entry) {
    const index = insertAt(entry.job.id);
    if (ids[index] === entry.job.id) ids.splice(index, 1);
    jobs.delete(entry.job.id);
    drop(entry);
    if (virtual && ids.length < UNVIRTUAL_AT) setVirtual(false);
    else if (virtual) scheduleWindow();
  }

  function setVirtual(on) {
    virtual = on;
    rowHeight = 0;
    windowIds = on ? ids.filter((id) => jobs.get(id).row) : []; // (the window drops those out of view)
    const body = $('rows');
    body.classList.toggle('virtual', on);
    $('jobs').classList.toggle('virtual', on);
    if (on) {
      layoutWindow();
      return;
    }
    const rows = [];
    const built = [];
    for (const id of ids) {
      const entry = jobs.get(id);
      if (!entry.row) {
        build(entry);
        built.push(entry);
      }
      rows.push(entry.row);
    }
    body.replaceChildren(...rows);
    for (const entry of built) render(entry);
  }

  function scheduleWindow() {
    if (virtual && !windowFrame) windowFrame = requestAnimationFrame(layoutWindow);
  }

  // Builds the rows in view (and OVERSCAN either side), drops the others, sizes the spacers.
  function layoutWindow() {
    windowFrame = 0;
    if (!virtual) return;
    const body = $('rows');
    if (!rowHeight) { // one row, drawn to be measured: every row of the window has its height
      const first = ids.length ? jobs.get(ids[0]) : null;
      if (first && !first.row) build(first);
      if (first) {
        body.replaceChildren(first.row);
        render(first);
        rowHeight = first.row.getBoundingClientRect().height || 40;
      }
    }
    const height = rowHeight || 40;
    const top = body.getBoundingClientRect().top; // the table's top against the viewport (spacer included)
    const from = Math.max(0, Math.floor(-top / height) - OVERSCAN);
    const to = Math.min(ids.length, Math.ceil((window.innerHeight - top) / height) + OVERSCAN);
    const wanted = ids.slice(from, Math.max(from, to));
    const keep = new Set(wanted);
    for (const id of windowIds) {
      const entry = jobs.get(id);
      if (entry && !keep.has(id)) drop(entry);
    }
    const built = [];
    const rows = wanted.map((id) => {
      const entry = jobs.get(id);
      if (!entry.row) {
        build(entry);
        built.push(entry);
      }
      return entry.row;
    });
    padTop.style.height = `${from * height}px`;
    padBottom.style.height = `${Math.max(0, ids.length - from - wanted.length) * height}px`;
    const same = wanted.length === windowIds.length && wanted.every((id, i) => id === windowIds[i]) && padTop.parentNode === body;
    if (!same) body.replaceChildren(padTop, ...rows, padBottom);
    for (const entry of built) render(entry);
    windowIds = wanted;
  }

  function render(entry) {
    if (!entry.row) return; // out of view: drawn when it comes into view
    const { job, shown } = entry;
    if (shown.state !== job.state) {
      entry.badge.textContent = job.state.toLowerCase();
      entry.badge.className = `badge s-${job.state.toLowerCase()}`;
      entry.cancel.hidden = job.done || !canAct();
      shown.state = job.state;
    }
    if (shown.progress !== job.progress) {
      entry.bar.value = job.progress || 0;
      entry.pct.textContent = percent(job);
      shown.progress = job.progress;
    }
    const queue = job.state === 'QUEUED' && job.queuePosition ? `#${job.queuePosition}` : '';
    if (shown.queue !== queue) {
      entry.queueCell.textContent = queue;
      shown.queue = queue;
    }
    if (!shown.labels) {
      for (const [k, v] of Object.entries(job.labels || {})) {
        const chip = el('button', 'chip', `${k}=${v}`);
        chip.type = 'button';
        chip.dataset.action = 'label';
        chip.dataset.label = `${k}=${v}`;
        chip.title = 'Show only jobs with this label';
        entry.labelsCell.append(chip);
      }
      shown.labels = true;
    }
    let info = '';
    let infoClass = 'info';
    if (job.error && job.state !== 'SUCCEEDED') { // the failure's reason and its message, in the list
      info = `${job.error.reason || job.error.code}: ${job.error.message}`;
      infoClass = job.state === 'FAILED' ? 'info failed' : 'info';
    }
    const text = transcriptOf(entry.segments);
    if (text) { // the end of a long transcript (the part that grows); the detail view has it all
      const tail = text.length > TAIL ? `… ${text.slice(-TAIL).replace(/^\S*\s+/, '')}` : text;
      info = info ? `${tail} — ${info}` : tail;
    }
    if (shown.info !== info) {
      entry.infoCell.textContent = info;
      entry.infoCell.className = infoClass;
      entry.infoCell.title = job.error ? job.error.message : text;
      shown.info = info;
    }
    setText(entry.ageCell, age(Date.now() / 1000 - job.createTime));
    // Last: what observers (and tests) key on, once the row shows the revision.
    entry.row.dataset.state = job.state;
    entry.row.dataset.rev = String(job.revision);
  }

  // One revision of a job, from any source. segmentsOffset: undefined (the source has no
  // transcript: List), null (unknown: read the job), or the count of segments before `segments`.
  function apply(job, segmentsOffset, segments) {
    const newest = seen.get(job.id) || 0;
    if (job.revision < newest) return;
    seen.set(job.id, job.revision);
    if (detail && detail.id === job.id) detailRevision(job);
    let entry = jobs.get(job.id);
    if (!matches(job)) {
      if (entry) {
        removeRow(entry);
        scheduleSummary();
      }
      if (detail && detail.id === job.id && !detail.loading) renderDetail();
      return;
    }
    if (!entry) entry = addRow(job);
    entry.job = job;
    if (segmentsOffset === null) {
      if (whisperRoutes.has(job.route) && job.state !== 'QUEUED') loadJob(entry);
    } else if (segmentsOffset === undefined) {
      if (whisperRoutes.has(job.route) && job.state !== 'QUEUED' && entry.loadedRev < job.revision) loadJob(entry);
    } else if (segmentsOffset > entry.segments.length) {
      loadJob(entry); // revisions were coalesced: some segments never came
    } else if (segmentsOffset + segments.length > entry.segments.length) {
      entry.segments = entry.segments.slice(0, segmentsOffset).concat(segments);
    }
    render(entry);
    if (detail && detail.id === job.id && !detail.loading) renderDetail();
    scheduleSummary();
  }

  // Reads a job with its whole transcript (one read at a time per job).
  async function loadJob(entry) {
    if (entry.loading) {
      entry.reload = true;
      return;
    }
    entry.loading = true;
    const gen = generation;
    try {
      const data = await call('GET', scoped(`${API}/jobs/${encodeURIComponent(entry.job.id)}`));
      if (gen !== generation) return;
      entry.loadedRev = data.job.revision;
      apply(data.job, 0, data.job.segments);
    } catch (error) {
      if (error.status === 404) entry.loadedRev = Infinity; // expired or deleted
    } finally {
      entry.loading = false;
      if (entry.reload && gen === generation && jobs.get(entry.job.id) === entry) {
        entry.reload = false;
        loadJob(entry);
      }
    }
  }

  let summaryTimer = 0;
  function scheduleSummary() {
    if (!summaryTimer) summaryTimer = setTimeout(renderSummary, 100);
  }

  function renderSummary() {
    summaryTimer = 0;
    const counts = {};
    for (const entry of jobs.values()) counts[entry.job.state] = (counts[entry.job.state] || 0) + 1;
    const parts = STATES.filter((s) => counts[s]).map((s) => `${counts[s]} ${s.toLowerCase()}`);
    $('summary').textContent = `${jobs.size} job${jobs.size === 1 ? '' : 's'}${parts.length ? ` · ${parts.join(' · ')}` : ''}`;
    $('empty').hidden = jobs.size > 0;
  }

  function tickAges() {
    const now = Date.now() / 1000;
    for (const entry of jobs.values()) if (entry.row) setText(entry.ageCell, age(now - entry.job.createTime));
    if (detail) renderDetailAge();
  }

  // -- the routes: the server's counts --------------------------------------------------------

  // Jobs ended per minute as a small bar chart (SVG, no library): succeeded below, failed above them.
  function chart(ended) {
    const ns = 'http://www.w3.org/2000/svg';
    const ok = ended.SUCCEEDED || [];
    const bad = (ended.FAILED || []).map((n, i) => n + ((ended.CANCELLED || [])[i] || 0));
    const top = Math.max(1, ...ok.map((n, i) => n + bad[i]));
    const svg = document.createElementNS(ns, 'svg');
    svg.setAttribute('viewBox', `0 0 ${ok.length * 6} 30`);
    svg.setAttribute('class', 'chart');
    svg.setAttribute('role', 'img');
    ok.forEach((n, i) => {
      for (const [value, base, cls] of [[n, 0, 'ok'], [bad[i], n, 'bad']]) {
        if (!value) continue;
        const bar = document.createElementNS(ns, 'rect');
        bar.setAttribute('x', String(i * 6));
        bar.setAttribute('width', '5');
        bar.setAttribute('height', String((value / top) * 30));
        bar.setAttribute('y', String(30 - ((value + base) / top) * 30));
        bar.setAttribute('class', cls);
        svg.append(bar);
      }
    });
    return svg;
  }

  function routeCard(route, minutes) {
    const card = el('article', `route-card${route.up ? '' : ' down'}`);
    card.dataset.route = route.name;
    const ended = route.ended || {};
    const sum = (xs) => (xs || []).reduce((a, b) => a + b, 0);
    const done = sum(ended.SUCCEEDED) + sum(ended.FAILED) + sum(ended.CANCELLED);
    const failed = sum(ended.FAILED);
    const head = el('h2', '', route.name);
    head.append(el('span', `badge ${route.up ? 's-succeeded' : 's-failed'}`, route.up ? 'up' : 'down'));
    const numbers = el('dl', 'numbers');
    const put = (name, value, key) => {
      const dd = el('dd', '', value);
      dd.dataset.key = key;
      numbers.append(el('dt', '', name), dd);
    };
    put('waiting', String(route.waiting), 'waiting');
    put('running', String(route.running), 'running');
    put('oldest', route.oldestSeconds == null ? '—' : age(route.oldestSeconds), 'oldest');
    put(`ended / ${minutes} min`, String(done), 'ended');
    put('failed', done ? `${Math.round((failed / done) * 100)}%` : '—', 'failed');
    const chartBox = el('div', 'chart-box');
    chartBox.title = `jobs ended per minute over ${minutes} minutes (failed and cancelled in red)`;
    chartBox.append(chart(ended));
    const workers = el('ul', 'workers');
    for (const w of route.workers) {
      const item = el('li', w.healthy ? 'healthy' : 'silent');
      const jobsHeld = Array.isArray(w.jobs) ? w.jobs.length : w.jobs;
      item.textContent = `${w.name}: ${w.healthy ? 'healthy' : `silent ${age(w.silentSeconds)}`}, ${jobsHeld} running`;
      if (Array.isArray(w.jobs) && w.jobs.length) item.title = w.jobs.join('\n');
      workers.append(item);
    }
    if (!route.workers.length) workers.append(el('li', 'silent', 'no worker'));
    card.append(head, numbers, chartBox, workers);
    if (route.startError) card.append(el('p', 'error', route.startError));
    return card;
  }

  let overviewLoading = false;
  async function loadOverview() {
    if (overviewLoading || $('main').hidden || document.hidden) return;
    overviewLoading = true;
    try {
      const data = await call('GET', `${API}/overview`);
      const box = $('overview');
      box.replaceChildren(...data.routes.map((route) => routeCard(route, data.minutes)));
    } catch (_) {
      // the next tick tries again
    } finally {
      overviewLoading = false;
    }
  }

  // -- history (List) --------------------------------------------------------------------------

  // One List page (newest first); answers the stream position read before it (a resume token).
  async function loadPage(token) {
    const gen = generation;
    const q = query(filter, true);
    q.set('page_size', '50');
    if (token) q.set('page_token', token);
    $('more').disabled = true;
    try {
      const data = await call('GET', `${API}/jobs?${q}`);
      if (gen !== generation) return null;
      for (const job of data.jobs) apply(job, undefined, []);
      nextPageToken = data.nextPageToken || '';
      $('more').hidden = !nextPageToken;
      renderSummary();
      return data.resumeToken || '';
    } catch (error) {
      if (gen === generation) $('summary').textContent = `Could not list jobs: ${error.message}`;
      return null;
    } finally {
      $('more').disabled = false;
    }
  }

  // Every queued or running job, however old (the first page holds only the newest).
  async function loadActive() {
    const gen = generation;
    const active = ['QUEUED', 'RUNNING'].filter((s) => !filter.states.length || filter.states.includes(s));
    if (!active.length) return;
    let token = '';
    for (let pages = 0; pages < 10; pages += 1) {
      const q = query({ ...filter, states: active }, true);
      q.set('page_size', '1000');
      if (token) q.set('page_token', token);
      let data;
      try {
        data = await call('GET', `${API}/jobs?${q}`);
      } catch (_) {
        return;
      }
      if (gen !== generation) return;
      for (const job of data.jobs) apply(job, undefined, []);
      token = data.nextPageToken;
      if (!token) return;
    }
  }

  // -- the push stream -------------------------------------------------------------------------

  function setConn(state, text) {
    const conn = $('conn');
    conn.dataset.conn = state;
    conn.textContent = text || state;
  }

  function connect(resume) {
    if (source) source.close();
    clearTimeout(reconnectTimer);
    const gen = generation;
    const q = query(filter, false);
    if (resume) q.set('resume', resume); // a resume token (not a secret); the cookie authenticates
    const s = q.toString();
    const es = new EventSource(`${API}/events${s ? `?${s}` : ''}`);
    source = es;
    setConn('connecting', 'connecting…');
    const fresh = () => gen === generation && source === es;
    es.onopen = () => {
      if (!fresh()) return;
      lastMessageAt = Date.now();
      setConn('live');
    };
    es.addEventListener('job', (event) => {
      if (!fresh()) return;
      lastEventId = event.lastEventId || lastEventId;
      lastMessageAt = Date.now();
      backoff = 500;
      const message = JSON.parse(event.data);
      apply(message.job, message.segmentsOffset, message.segments || []);
    });
    es.addEventListener('heartbeat', (event) => {
      if (!fresh()) return;
      lastEventId = event.lastEventId || lastEventId;
      lastMessageAt = Date.now();
    });
    es.addEventListener('failure', (event) => {
      if (!fresh()) return;
      es.close();
      const failure = JSON.parse(event.data);
      if (failure.reason === 'INVALID_RESUME_TOKEN') reset(); // the data was replaced: start anew
      else reconnectLater(failure.message);
    });
    es.onerror = () => {
      if (!fresh()) return;
      if (es.readyState === EventSource.CLOSED) recheck(); // refused (signed out?) or not a stream
      else setConn('reconnecting', 'reconnecting…'); // the browser retries, with Last-Event-ID
    };
  }

  function reconnectLater(why) {
    if (source) source.close();
    setConn('offline', why ? `offline: ${why}` : 'offline');
    clearTimeout(reconnectTimer);
    reconnectTimer = setTimeout(() => connect(lastEventId), backoff);
    backoff = Math.min(backoff * 2, 10000);
  }

  async function recheck() {
    try {
      config = await call('GET', `${API}/config`);
    } catch (_) {
      reconnectLater();
      return;
    }
    if (config.auth && !config.tenant) showLogin();
    else reconnectLater();
  }

  function watchdog() {
    if (!source || source.readyState !== EventSource.OPEN) return;
    const limit = (config.heartbeatSeconds * 2 + 5) * 1000;
    if (Date.now() - lastMessageAt > limit) connect(lastEventId); // a silent connection: resume elsewhere
  }

  // -- the detail view -------------------------------------------------------------------------

  async function openDetail(id, push) {
    detail = { id, lastRev: 0, loading: true };
    if (push) history.pushState(null, '', pageUrl(filter, id));
    $('detail').hidden = false;
    document.body.classList.add('with-detail');
    $('detail-title').textContent = `Job ${id.slice(-12)}`;
    $('detail-revisions').textContent = '';
    $('detail-fields').textContent = '';
    $('detail-transcript').textContent = '';
    try {
      const data = await call('GET', scoped(`${API}/jobs/${encodeURIComponent(id)}`));
      if (!detail || detail.id !== id) return;
      detail.job = data.job;
      detail.segments = data.job.segments;
      for (const revision of data.revisions) addRevision(revision, 'history');
      detail.loading = false;
      apply(data.job, 0, data.job.segments);
      renderDetail();
      const newer = seen.get(id) || 0;
      if (newer > detail.lastRev) fillGap(); // changed while it loaded
    } catch (error) {
      if (!detail || detail.id !== id) return;
      detail.loading = false;
      $('detail-fields').textContent = '';
      $('detail-fields').append(el('dt', '', 'Error'), el('dd', 'error', error.message));
    }
  }

  function closeDetail(push) {
    detail = null;
    $('detail').hidden = true;
    document.body.classList.remove('with-detail');
    if (push) history.pushState(null, '', pageUrl(filter, ''));
  }

  function addRevision(job, arrived) {
    if (job.revision <= detail.lastRev) return;
    detail.lastRev = job.revision;
    const row = el('tr');
    row.dataset.rev = String(job.revision);
    row.append(
      el('td', 'num', String(job.revision)),
      el('td', `s-${job.state.toLowerCase()}`, job.state.toLowerCase()),
      el('td', 'num', percent(job)),
      el('td', 'num', job.state === 'QUEUED' && job.queuePosition ? `#${job.queuePosition}` : ''),
      el('td', 'num', job.segmentCount == null ? '' : String(job.segmentCount)),
      el('td', '', arrived),
    );
    $('detail-revisions').append(row);
  }

  function detailRevision(job) {
    if (detail.loading || job.revision <= detail.lastRev) return;
    if (!detail.job || detail.job.revision < job.revision) detail.job = job;
    if (job.revision === detail.lastRev + 1) addRevision(job, new Date().toLocaleTimeString());
    else fillGap(); // the stream coalesced some revisions: read them
  }

  async function fillGap() {
    if (!detail || detail.filling) return;
    const { id } = detail;
    detail.filling = true;
    try {
      const data = await call('GET', scoped(`${API}/jobs/${encodeURIComponent(id)}?after=${detail.lastRev}`));
      if (!detail || detail.id !== id) return;
      for (const revision of data.revisions) addRevision(revision, new Date().toLocaleTimeString());
      detail.job = data.job;
      renderDetail();
    } catch (_) {
      // the next revision tries again
    } finally {
      if (detail && detail.id === id) detail.filling = false;
    }
  }

  function renderDetail() {
    const entry = jobs.get(detail.id);
    const job = entry && entry.job.revision >= (detail.job ? detail.job.revision : 0) ? entry.job : detail.job;
    if (!job) return;
    const fields = [
      ['Id', job.id],
      ['Route', job.route],
      ['State', job.state.toLowerCase()],
      ['Revision', String(job.revision)],
      ['Progress', percent(job)],
      ['Queue position', job.state === 'QUEUED' && job.queuePosition ? String(job.queuePosition) : '—'],
      ['Created', when(job.createTime)],
      ['Age', age(Date.now() / 1000 - job.createTime)],
      ['Started', when(job.startTime)],
      ['Finished', when(job.finishTime)],
      ['Expires', when(job.expireTime)],
      ['Labels', Object.entries(job.labels || {}).map(([k, v]) => `${k}=${v}`).join(', ') || '—'],
      ['Request id', job.requestId || '—'],
    ];
    if (job.attempt > 1) fields.push(['Attempt', String(job.attempt)]);
    if (job.retryOf) fields.push(['Retry of', job.retryOf]);
    if (job.retriedBy) fields.push(['Retried by', job.retriedBy]);
    if (job.error) fields.push(['Error', `${job.error.code} ${job.error.reason}: ${job.error.message}`]);
    const list = $('detail-fields');
    list.textContent = '';
    for (const [name, value] of fields) {
      const dd = el('dd', name === 'Error' ? 'error' : '', value);
      if (name === 'Age') dd.id = 'detail-age';
      list.append(el('dt', '', name), dd);
    }
    const segments = entry ? entry.segments : detail.segments || [];
    $('detail-transcript').textContent = transcriptOf(segments) || '—';
    const acting = canAct();
    $('detail-cancel').hidden = job.done || !acting;
    $('detail-retry').hidden = !acting || !(job.state === 'FAILED' || job.state === 'CANCELLED');
    $('detail-delete').hidden = !job.done || !acting;
    $('detail').dataset.state = job.state;
  }

  function renderDetailAge() {
    const node = $('detail-age');
    const job = detail.job;
    if (node && job) node.textContent = age(Date.now() / 1000 - job.createTime);
  }

  // -- actions ---------------------------------------------------------------------------------

  // Asks before an action: resolves true when confirmed (a <dialog>, so it looks like the page and tests can
  // click it; nothing happens on Escape or Keep).
  function confirmAction(text) {
    const dialog = $('confirm');
    $('confirm-text').textContent = text;
    return new Promise((resolve) => {
      dialog.addEventListener('close', () => resolve(dialog.returnValue === 'yes'), { once: true });
      dialog.returnValue = '';
      dialog.showModal();
      $('confirm-no').focus();
    });
  }

  async function retryJob(id, button) {
    if (!(await confirmAction(`Run job ${id.slice(-12)} again, as a new job?`))) return;
    if (button) button.disabled = true;
    try {
      const data = await call('POST', scoped(`${API}/jobs/${encodeURIComponent(id)}/retry`));
      apply(data.job, undefined, []);
      openDetail(data.job.id, true);
    } catch (error) {
      $('notice').textContent = `Could not retry ${id}: ${error.message}`;
    } finally {
      if (button) button.disabled = false;
    }
  }

  async function deleteJob(id, button) {
    if (!(await confirmAction(`Delete job ${id.slice(-12)} and its result now? This cannot be undone.`))) return;
    if (button) button.disabled = true;
    try {
      await call('DELETE', scoped(`${API}/jobs/${encodeURIComponent(id)}`));
      const entry = jobs.get(id);
      if (entry) removeRow(entry);
      closeDetail(true);
      scheduleSummary();
    } catch (error) {
      $('notice').textContent = `Could not delete ${id}: ${error.message}`;
    } finally {
      if (button) button.disabled = false;
    }
  }

  async function cancelMatching() {
    const what = query(filter, true).toString();
    if (!(await confirmAction(`Cancel every queued and running job${what ? ' that matches the filter' : ''}?`))) return;
    try {
      const data = await call('POST', `${API}/cancel-matching${what ? `?${what}` : ''}`);
      $('notice').textContent = `Cancelled ${data.cancelled} of ${data.asked} job${data.asked === 1 ? '' : 's'}.`;
    } catch (error) {
      $('notice').textContent = `Could not cancel: ${error.message}`;
    }
  }

  async function find(event) {
    event.preventDefault();
    const wanted = $('find-q').value.trim();
    $('find-error').textContent = '';
    if (!wanted) return;
    try {
      const data = await call('GET', scoped(`${API}/find?q=${encodeURIComponent(wanted)}`));
      apply(data.job, undefined, []);
      openDetail(data.job.id, true);
    } catch (error) {
      $('find-error').textContent = error.status === 404 ? `No job ${wanted}.` : error.message;
    }
  }

  async function cancelJob(id, button) {
    if (!(await confirmAction(`Cancel job ${id.slice(-12)}?`))) return;
    if (button) button.disabled = true;
    try {
      const data = await call('POST', scoped(`${API}/jobs/${encodeURIComponent(id)}/cancel`));
      apply(data.job, undefined, []);
    } catch (error) {
      $('summary').textContent = `Could not cancel ${id}: ${error.message}`;
    } finally {
      if (button) button.disabled = false;
    }
  }

  // Starts the list afresh: the newest page, then the stream from the position read before it
  // (so nothing changed since the list is missed), and every active job.
  async function reset() {
    generation += 1;
    const gen = generation;
    if (source) source.close();
    source = null;
    clearTimeout(reconnectTimer);
    jobs.clear();
    seen.clear();
    ids = [];
    windowIds = [];
    virtual = false;
    $('rows').classList.remove('virtual');
    $('jobs').classList.remove('virtual');
    $('rows').textContent = '';
    lastEventId = '';
    nextPageToken = '';
    $('more').hidden = true;
    $('summary').textContent = 'Loading…';
    const position = await loadPage('');
    if (gen !== generation) return;
    if (position === null) { // the gateway did not answer: try again
      setConn('offline', 'offline');
      reconnectTimer = setTimeout(() => { if (gen === generation) reset(); }, backoff);
      backoff = Math.min(backoff * 2, 10000);
      return;
    }
    lastEventId = position;
    connect(position);
    loadActive();
  }

  function applyAddress() {
    filter = readFilter();
    showFilterForm();
    showTenant();
    reset();
    const id = new URLSearchParams(location.search).get('job');
    if (id) openDetail(id, false);
    else if (detail) closeDetail(false);
  }

  // -- sign-in ---------------------------------------------------------------------------------

  function showLogin() {
    generation += 1;
    if (source) source.close();
    source = null;
    clearTimeout(reconnectTimer);
    setConn('offline', 'signed out');
    $('main').hidden = true;
    $('detail').hidden = true;
    $('signout').hidden = true;
    $('tenant').textContent = '';
    $('login').hidden = false;
    $('token').focus();
  }

  function showMain() {
    loadOverview();
    $('login').hidden = true;
    $('main').hidden = false;
    $('signout').hidden = !config.auth;
    buildTenants();
    applyAddress();
  }

  async function signIn(event) {
    event.preventDefault();
    const input = $('token');
    $('login-error').textContent = '';
    try {
      const data = await call('POST', `${API}/session`, { token: input.value });
      input.value = '';
      config.tenant = data.tenant;
      try { // the tenants this one may view
        config = await call('GET', `${API}/config`);
      } catch (_) {
        config.tenants = [];
      }
      showMain();
    } catch (error) {
      $('login-error').textContent = error.status === 401 ? 'That token is not valid here.' : error.message;
    }
  }

  async function signOut() {
    try {
      await call('DELETE', `${API}/session`);
    } finally {
      config.tenant = null;
      showLogin();
    }
  }

  // -- tenants (an operator's view) ------------------------------------------------------------

  // The tenant filter: shown when this browser's tenant may view others ([auth.operators]).
  function buildTenants() {
    const select = $('tenant-select');
    select.textContent = '';
    const tenants = config.tenants || [];
    for (const [i, t] of tenants.entries()) {
      const option = el('option', '', i === 0 ? `${t.name} (you)` : `${t.name}${t.actions ? '' : ' (view only)'}`);
      option.value = i === 0 ? '' : t.name;
      select.append(option);
    }
    $('tenant-filter').hidden = tenants.length < 2;
  }

  function showTenant() {
    const own = config.auth && config.tenant ? `tenant ${config.tenant}` : '';
    $('tenant').textContent = filter.tenant ? `${own} · viewing ${filter.tenant}${canAct() ? '' : ' (view only)'}` : own;
    $('cancel-matching').hidden = !canAct();
    if (filter.tenant && $('tenant-select').value !== filter.tenant) { // not one this tenant may view: say so
      $('notice').textContent = `Tenant ${filter.tenant} is not one you may view.`;
    }
  }

  // -- start -----------------------------------------------------------------------------------

  function buildForm() {
    const states = $('states');
    for (const state of STATES) {
      const label = el('label', `check s-${state.toLowerCase()}`);
      const box = el('input');
      box.type = 'checkbox';
      box.name = 'state';
      box.value = state;
      label.append(box, document.createTextNode(` ${state.toLowerCase()}`));
      states.append(label);
    }
    for (const route of config.routes) {
      const option = el('option', '', route.name);
      option.value = route.name;
      $('route').append(option);
      if (route.backend === 'whisper') whisperRoutes.add(route.name);
    }
  }

  function wire() {
    $('login-form').addEventListener('submit', signIn);
    $('signout').addEventListener('click', signOut);
    $('filters').addEventListener('submit', (event) => {
      event.preventDefault();
      filter = filterFromForm();
      history.pushState(null, '', pageUrl(filter, detail ? detail.id : ''));
      showTenant();
      reset();
    });
    $('clear').addEventListener('click', () => {
      filter = { states: [], route: '', labels: [], since: '', tenant: '' };
      showFilterForm();
      history.pushState(null, '', pageUrl(filter, detail ? detail.id : ''));
      showTenant();
      reset();
    });
    $('more').addEventListener('click', () => loadPage(nextPageToken));
    $('rows').addEventListener('click', (event) => {
      const target = event.target.closest('button');
      if (!target) return;
      const row = target.closest('tr');
      const id = row && row.dataset.id;
      if (!id) return;
      if (target.dataset.action === 'cancel') cancelJob(id, target);
      else if (target.dataset.action === 'open') openDetail(id, true);
      else if (target.dataset.action === 'label') {
        const [k, ...rest] = target.dataset.label.split('=');
        if (!filter.labels.some(([a, b]) => a === k && b === rest.join('='))) filter.labels.push([k, rest.join('=')]);
        showFilterForm();
        history.pushState(null, '', pageUrl(filter, detail ? detail.id : ''));
        reset();
      }
    });
    $('detail-close').addEventListener('click', () => closeDetail(true));
    $('detail-cancel').addEventListener('click', (event) => detail && cancelJob(detail.id, event.target));
    $('detail-retry').addEventListener('click', (event) => detail && retryJob(detail.id, event.target));
    $('detail-delete').addEventListener('click', (event) => detail && deleteJob(detail.id, event.target));
    $('cancel-matching').addEventListener('click', cancelMatching);
    $('find').addEventListener('submit', find);
    document.addEventListener('keydown', (event) => {
      if (event.key === 'Escape' && detail) closeDetail(true);
    });
    window.addEventListener('popstate', () => {
      if (!$('main').hidden) applyAddress();
    });
    window.addEventListener('scroll', scheduleWindow, { passive: true });
    window.addEventListener('resize', () => { rowHeight = 0; scheduleWindow(); });
    setInterval(tickAges, 1000);
    setInterval(watchdog, 5000);
    setInterval(loadOverview, 2000);
  }

  async function start() {
    wire();
    try {
      config = await call('GET', `${API}/config`);
    } catch (error) {
      $('summary').textContent = `The gateway did not answer: ${error.message}`;
      $('main').hidden = false;
      return;
    }
    buildForm();
    if (config.auth && !config.tenant) showLogin();
    else showMain();
  }

  start();
})();
