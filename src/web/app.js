// ssegate's built-in chat page. Streams /v1/chat/completions through fetch,
// parses the SSE itself, and resumes a dropped answer with Last-Event-ID.
// Model text only ever reaches the page as text nodes, never as HTML.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const log = $('log'), input = $('input'), sendBtn = $('send'), stopBtn = $('stop');
  const modelPick = $('model'), keyForm = $('keyform'), keyInput = $('key'), keyNote = $('keynote');
  const statusLine = $('status');
  const KEY = 'ssegate.key', MODEL = 'ssegate.model';
  const BACKOFF_MS = [500, 1000, 2000, 4000];
  const OFFLINE_WAIT_MS = 60000;

  let history = []; // the conversation sent with every question; New chat starts another
  let turn = null;    // the answer being streamed

  const stored = (name) => { try { return sessionStorage.getItem(name); } catch { return null; } };
  const store = (name, value) => { try { sessionStorage.setItem(name, value); } catch { /* private mode */ } };

  function withAuth(headers) {
    const key = stored(KEY);
    if (key) headers.Authorization = 'Bearer ' + key;
    return headers;
  }

  // The §6 message of an error body, or the status.
  async function errorOf(res) {
    try {
      const body = await res.json();
      if (body && body.error && typeof body.error.message === 'string') return body.error.message;
    } catch { /* not JSON */ }
    return 'HTTP ' + res.status;
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // ---- models and the key ----

  function askKey(message) {
    keyForm.hidden = false;
    keyNote.textContent = stored(KEY) ? message : '';
    keyInput.focus();
  }

  async function loadModels() {
    let res;
    try {
      res = await fetch('v1/models', { headers: withAuth({}), cache: 'no-store' });
    } catch {
      statusLine.textContent = 'Cannot reach the gateway.';
      return;
    }
    if (res.status === 401) {
      askKey(await errorOf(res));
      return;
    }
    keyForm.hidden = true;
    if (!res.ok) {
      statusLine.textContent = 'Models: ' + (await errorOf(res));
      return;
    }
    let ids = [];
    try {
      const body = await res.json();
      ids = (body.data || []).map((m) => m && m.id).filter((id) => typeof id === 'string');
    } catch { /* an empty list below */ }
    statusLine.textContent = ids.length ? '' : 'The upstream lists no models.';
    const keep = stored(MODEL) || modelPick.value;
    modelPick.replaceChildren(...ids.map((id) => new Option(id, id)));
    if (ids.includes(keep)) modelPick.value = keep;
  }

  keyForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const key = keyInput.value.trim();
    if (!key) return;
    store(KEY, key);
    keyInput.value = '';
    loadModels().then(() => { if (keyForm.hidden) input.focus(); });
  });
  modelPick.addEventListener('change', () => store(MODEL, modelPick.value));

  // ---- rendering ----

  // Text and ``` fenced blocks, each built with textContent.
  function render(target, text) {
    const frag = document.createDocumentFragment();
    let lines = [], inCode = false, afterFence = false;
    const flush = (beforeFence) => {
      let chunk = lines.join('\n');
      lines = [];
      if (inCode) {
        const pre = el('pre'), code = el('code', null, chunk);
        pre.append(code);
        frag.append(pre);
        return;
      }
      if (afterFence) chunk = chunk.replace(/^\n+/, '');
      if (beforeFence) chunk = chunk.replace(/\n+$/, '');
      if (chunk) frag.append(el('p', null, chunk));
    };
    for (const line of text.split('\n')) {
      if (/^ {0,3}```/.test(line)) {
        flush(true);
        inCode = !inCode;
        afterFence = true;
        continue;
      }
      lines.push(line);
    }
    flush(false);
    target.replaceChildren(frag);
  }

  function nearBottom() { return log.scrollHeight - log.scrollTop - log.clientHeight < 80; }
  function scrollDown() { log.scrollTop = log.scrollHeight; }

  function addMessage(role, text) {
    const box = el('article', 'msg ' + role);
    box.setAttribute('aria-label', role === 'user' ? 'You' : 'Assistant');
    const body = el('div', 'text');
    render(body, text);
    box.append(body);
    log.append(box);
    scrollDown();
    return { box, body };
  }

  function note(t, cls, text) {
    let n = t.box.querySelector('.' + cls);
    if (!n) {
      n = el('p', cls);
      t.box.append(n);
    }
    n.textContent = text;
  }

  function setBusy(busy) {
    const stopHadFocus = document.activeElement === stopBtn;
    sendBtn.disabled = busy;
    stopBtn.disabled = !busy;
    if (busy) return;
    if (stopHadFocus) input.focus(); // keep the keyboard user's place
  }

  // ---- SSE ----

  // Feeds text in; calls onEvent({id, event, data}) per dispatched event and
  // stops at the first non-null result, which it returns.
  function sseParser(onEvent) {
    let buf = '', data = [], event = '', id = null;
    function line(l) {
      if (l === '') {
        const ev = data.length ? { id, event, data: data.join('\n') } : null;
        data = [];
        event = '';
        return onEvent(ev, id);
      }
      if (l[0] === ':') return null;
      const colon = l.indexOf(':');
      const field = colon < 0 ? l : l.slice(0, colon);
      let value = colon < 0 ? '' : l.slice(colon + 1);
      if (value[0] === ' ') value = value.slice(1);
      if (field === 'data') data.push(value);
      else if (field === 'event') event = value;
      else if (field === 'id' && !value.includes('\0')) id = value;
      return null;
    }
    return (text) => {
      buf += text;
      for (;;) {
        const i = buf.search(/[\r\n]/);
        if (i < 0 || (buf[i] === '\r' && i === buf.length - 1)) return null; // a CRLF may be split
        const l = buf.slice(0, i);
        buf = buf.slice(i + (buf[i] === '\r' && buf[i + 1] === '\n' ? 2 : 1));
        const r = line(l);
        if (r) return r;
      }
    };
  }

  // ---- streaming an answer ----

  const sleep = (ms, t) => new Promise((resolve) => {
    const timer = setTimeout(() => { t.wake = null; resolve(); }, ms);
    t.wake = () => { clearTimeout(timer); t.wake = null; resolve(); };
  });

  function untilOnline(t) {
    if (navigator.onLine) return Promise.resolve();
    note(t, 'note', 'offline, waiting for the network\u2026');
    return new Promise((resolve) => {
      const done = () => {
        window.removeEventListener('online', done);
        clearTimeout(timer);
        t.wake = null;
        resolve();
      };
      const timer = setTimeout(done, OFFLINE_WAIT_MS);
      window.addEventListener('online', done);
      t.wake = done;
    });
  }

  // Reads what follows [DONE] (the end of the chunked body) in the background,
  // so the connection is reused and the gateway sees a completed answer.
  function drain(reader) {
    (async () => {
      try { while (!(await reader.read()).done); } catch { /* gone anyway */ }
    })();
  }

  // One request: resolves to {kind: 'done' | 'error' | 'stopped' | 'dropped', message}.
  async function streamOnce(t, body) {
    const controller = new AbortController();
    t.controller = controller;
    const headers = withAuth({
      'Content-Type': 'application/json',
      Accept: 'text/event-stream',
      'Ssegate-Resumable': '1',
    });
    if (t.lastId) headers['Last-Event-ID'] = t.lastId;
    const dropped = (e) => (t.stopped ? { kind: 'stopped' } : { kind: 'dropped', message: String((e && e.message) || e) });
    let res;
    try {
      res = await fetch('v1/chat/completions', { method: 'POST', headers, body, signal: controller.signal, cache: 'no-store' });
    } catch (e) {
      return dropped(e);
    }
    if (!res.ok) {
      const message = await errorOf(res);
      if (res.status === 401) askKey(message);
      return { kind: 'error', message };
    }
    if (t.retrying) note(t, 'note', 'reconnected');
    t.retrying = false;
    t.failures = 0; // the budget is for one outage, not the whole answer
    const onEvent = (ev, id) => {
      if (ev) {
        if (ev.data === '[DONE]') return { kind: 'done' };
        let msg;
        try { msg = JSON.parse(ev.data); } catch { msg = null; }
        if (msg && msg.error) return { kind: 'error', message: String(msg.error.message || 'stream error') };
        if (ev.event === 'error') return { kind: 'error', message: ev.data };
        const choice = msg && msg.choices && msg.choices[0];
        const piece = choice && choice.delta && choice.delta.content;
        if (typeof piece === 'string') t.text += piece;
      }
      if (id) t.lastId = id; // only once its event is applied, so a resume neither skips nor repeats it
      return null;
    };
    const feed = sseParser(onEvent);
    const decoder = new TextDecoder();
    const reader = res.body.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const stick = nearBottom();
        const r = feed(decoder.decode(value, { stream: true }));
        render(t.body, t.text);
        if (stick) scrollDown();
        if (r) {
          drain(reader);
          return r;
        }
      }
    } catch (e) {
      return dropped(e);
    }
    return dropped(new Error('the stream ended early'));
  }

  async function stream(t, body) {
    for (;;) {
      const r = await streamOnce(t, body);
      t.controller = null;
      if (r.kind !== 'dropped' || t.stopped) return r.kind === 'dropped' ? { kind: 'stopped' } : r;
      // Without an id nothing can be resumed; only an answer not yet begun is safe to ask again.
      if ((t.text && !t.lastId) || t.failures >= BACKOFF_MS.length)
        return { kind: 'error', message: 'Connection lost: ' + r.message };
      note(t, 'note', 'connection lost, reconnecting\u2026');
      t.retrying = true;
      await sleep(BACKOFF_MS[t.failures++], t);
      if (!t.stopped) await untilOnline(t);
      if (t.stopped) return { kind: 'stopped' };
    }
  }

  async function ask(question) {
    const conversation = history;
    conversation.push({ role: 'user', content: question });
    addMessage('user', question);
    const { box, body } = addMessage('assistant', '');
    box.setAttribute('aria-busy', 'true');
    const t = { box, body, text: '', lastId: null, stopped: false, controller: null, wake: null,
      failures: 0, retrying: false, wentOffline: false };
    turn = t;
    setBusy(true);
    const request = { stream: true, messages: conversation.slice() };
    if (modelPick.value) request.model = modelPick.value;
    const r = await stream(t, JSON.stringify(request));
    render(t.body, t.text);
    box.setAttribute('aria-busy', 'false');
    if (r.kind === 'error') note(t, 'error', r.message);
    if (r.kind === 'stopped') note(t, 'note', 'stopped');
    if (r.kind !== 'error' && t.text) conversation.push({ role: 'assistant', content: t.text });
    if (turn === t) {
      turn = null;
      setBusy(false);
    }
  }

  function stop() {
    const t = turn;
    if (!t) return;
    t.stopped = true;
    if (t.controller) t.controller.abort();
    if (t.wake) t.wake();
    // A resumable stream outlives a dropped connection; Stop means it is not wanted: cancel it.
    const token = t.lastId && t.lastId.split('.')[0];
    if (token) fetch('streams/' + encodeURIComponent(token), { method: 'DELETE', headers: withAuth({}) }).catch(() => {});
  }

  $('ask').addEventListener('submit', (e) => {
    e.preventDefault();
    const question = input.value.trim();
    if (!question || turn) return;
    input.value = '';
    ask(question);
  });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $('ask').requestSubmit();
    }
  });
  // Back from offline mid-answer: the old connection may be dead without an
  // error yet (a new network), so when the answer can be resumed, resume it.
  window.addEventListener('offline', () => { if (turn) turn.wentOffline = true; });
  window.addEventListener('online', () => {
    const t = turn;
    if (!t || !t.wentOffline) return;
    t.wentOffline = false;
    if (t.lastId && t.controller) t.controller.abort();
  });
  stopBtn.addEventListener('click', stop);
  document.addEventListener('keydown', (e) => { if (e.key === 'Escape' && turn) stop(); });
  $('clear').addEventListener('click', () => {
    stop();
    turn = null;
    setBusy(false);
    history = [];
    log.replaceChildren();
    input.focus();
  });

  loadModels();
  input.focus();
})();
