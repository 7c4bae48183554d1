// The built-in chat page (src/web/) in headless Chromium, against gateways and
// mocks started here through `tests/integration/run.py --serve`.
// Usage: node tests/browser/page.test.mjs GATEWAY MOCK   (from the repo root)
// Last line: `N passed, N failed`; exit status 1 on any failure.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { chromium } from 'playwright-core';

const [GATEWAY = './ssegate', MOCK = 'tools/mock-upstream'] = process.argv.slice(2);
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const GOOD_KEY = 'sk-sdk-good-0123456789'; // known to run.py --serve
const SCREENSHOT = 'docs/screenshot.png';
const CASE_MS = 30_000;

// A reply the screenshot can show: prose, a fenced block, and markup that must stay text.
const MARKUP_REPLY =
  'Sure! Here is a streamed request with curl:\n\n```\ncurl -N localhost:8080/v1/chat/completions \\\n' +
  '  -d \'{"stream":true,"messages":[...]}\'\n```\n\nMarkup in a reply, such as ' +
  '<img src=x onerror=alert(1)> or <b>bold</b>, is shown as text and never run. ' +
  'Each word appears as it arrives, and Stop ends the answer at once.';

const show = (s) => JSON.stringify(s);
function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

// ---- processes ----

const children = [];

// One mock + gateway pair; resolves to {port, origin, stop()}.
function serve(name, extra) {
  const args = ['tests/integration/run.py', '--serve', '--serve-seconds', '280', '--gateway', GATEWAY, '--mock', MOCK,
    ...extra];
  const child = spawn('python3', args, { stdio: ['pipe', 'pipe', 'pipe'] });
  children.push(child);
  let err = '';
  child.stderr.on('data', (d) => { err = (err + d).slice(-4000); });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name}: no port within 30 s: ${err}`)), 30_000);
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = /^(\d+)\n/.exec(out);
      if (!m) return;
      clearTimeout(timer);
      const port = Number(m[1]);
      resolve({ name, port, origin: `http://127.0.0.1:${port}`, stderr: () => err });
    });
    child.on('exit', (code) => { clearTimeout(timer); reject(new Error(`${name}: run.py --serve exited ${code}: ${err}`)); });
  });
}

// Closing stdin ends run.py --serve, which kills its mock and gateway by PID.
async function stopChildren() {
  await Promise.all(children.map((c) => new Promise((resolve) => {
    if (c.exitCode !== null || c.signalCode !== null) return resolve();
    const t = setTimeout(() => { c.kill('SIGTERM'); resolve(); }, 5000);
    c.on('exit', () => { clearTimeout(t); resolve(); });
    c.stdin.end();
  })));
}

// A TCP relay in front of a gateway, so that a test can cut the browser's connections.
function cutter(port) {
  const pairs = new Set();
  const heads = [];
  const server = net.createServer((client) => {
    const up = net.connect(port, '127.0.0.1');
    const pair = { client, up };
    pairs.add(pair);
    let head = '';
    client.on('data', (d) => {
      if (head.length < 8192) {
        head += d.toString('latin1');
        if (head.includes('\r\n\r\n')) heads.push(head);
      }
    });
    client.pipe(up);
    up.pipe(client);
    const end = () => { pairs.delete(pair); client.destroy(); up.destroy(); };
    client.on('error', end).on('close', end);
    up.on('error', end).on('close', end);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    origin: `http://127.0.0.1:${server.address().port}`,
    heads,
    cut() { for (const p of [...pairs]) { p.client.resetAndDestroy(); p.up.destroy(); } },
    close() { for (const p of [...pairs]) { p.client.destroy(); p.up.destroy(); } server.close(); },
  })));
}

// ---- plain HTTP from node ----

function request(origin, path, { method = 'GET', headers = {}, body = null, timeout = 15_000 } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(origin + path, { method, headers, timeout }, (res) => {
      let data = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { data += d; });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: data }));
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${path}: timed out`)));
    req.on('error', reject);
    req.end(body);
  });
}

// The whole reply of a non-streamed question: what the page must end up showing.
async function referenceReply(srv, headers = {}) {
  const r = await request(srv.origin, '/v1/chat/completions', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...headers },
    body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'reference' }] }),
  });
  assert(r.status === 200, `reference reply: status ${r.status} ${r.body.slice(0, 200)}`);
  return JSON.parse(r.body).choices[0].message.content;
}

async function activeStreams(srv) {
  const r = await request(srv.origin, '/metrics');
  const m = /^ssegate_active_streams\s+(\S+)$/m.exec(r.body);
  assert(m, 'no ssegate_active_streams in /metrics');
  return Number(m[1]);
}

async function until(what, pred, timeoutMs) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (await pred()) return;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// ---- the browser ----

let browser;

// A fresh context and page, watched: uncaught errors, console errors, dialogs,
// and any request to an origin other than the page's.
async function open(origin, options = {}) {
  const context = await browser.newContext({ viewport: { width: 900, height: 640 }, ...options });
  context.setDefaultTimeout(5000);
  const page = await context.newPage();
  const seen = { pageErrors: [], consoleErrors: [], dialogs: [], foreign: [], posts: [] };
  page.on('pageerror', (e) => seen.pageErrors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') seen.consoleErrors.push(m.text()); });
  page.on('dialog', (d) => { seen.dialogs.push(d.message()); d.dismiss().catch(() => {}); });
  page.on('request', (r) => {
    const url = r.url();
    if (!url.startsWith('data:') && new URL(url).origin !== origin) seen.foreign.push(url);
    if (r.method() === 'POST') seen.posts.push({ url, headers: r.headers(), body: r.postData() });
  });
  const response = await page.goto(origin + '/', { waitUntil: 'load', timeout: 10_000 });
  return { context, page, seen, response };
}

// What every case asserts at its end. Failed fetches are logged by Chromium
// itself as "Failed to load resource"; a case that provokes them says so.
function clean(seen, { networkErrorsExpected = false } = {}) {
  assert(seen.pageErrors.length === 0, `uncaught errors: ${show(seen.pageErrors)}`);
  const errors = seen.consoleErrors.filter((t) => !(networkErrorsExpected && t.startsWith('Failed to load resource')));
  assert(errors.length === 0, `console errors: ${show(errors)}`);
  assert(seen.dialogs.length === 0, `dialogs: ${show(seen.dialogs)}`);
  assert(seen.foreign.length === 0, `requests to other origins: ${show(seen.foreign)}`);
}

// Records every distinct text of the newest reply while it streams.
async function recordReplies(page) {
  await page.evaluate(() => {
    window.__samples = [];
    const log = document.getElementById('log');
    new MutationObserver(() => {
      const all = log.querySelectorAll('.msg.assistant .text');
      const text = all.length ? all[all.length - 1].textContent : '';
      const s = window.__samples;
      if (text && s[s.length - 1] !== text) s.push(text);
    }).observe(log, { subtree: true, childList: true, characterData: true });
  });
}

// Types a question and presses Enter; returns the new reply's locator.
async function ask(page, question) {
  const n = await page.locator('.msg.assistant').count();
  await page.locator('#input').fill(question);
  await page.locator('#input').press('Enter');
  const reply = page.locator('.msg.assistant').nth(n);
  await reply.waitFor({ timeout: 5000 });
  return reply;
}

async function finished(page, reply, timeout = 15_000) {
  await page.waitForFunction((el) => el.getAttribute('aria-busy') === 'false', await reply.elementHandle(), { timeout });
}

const textOf = (reply) => reply.locator('.text').evaluate((el) => el.textContent);
const noteOf = (reply, cls = 'note') => reply.evaluate((el, c) => {
  const n = el.querySelector('.' + c);
  return n ? n.textContent : '';
}, cls);

async function modelOptions(page) {
  await page.waitForFunction(() => document.querySelectorAll('#model option').length > 0, null, { timeout: 10_000 });
  return page.locator('#model option').evaluateAll((os) => os.map((o) => o.value));
}

// ---- cases ----

let passed = 0;
let failed = 0;
const cleanups = [];

const ONLY = process.env.BROWSER_ONLY; // a substring of the case names to run

async function test(name, fn) {
  if (ONLY && !name.includes(ONLY)) return;
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${CASE_MS / 1000} s`)), CASE_MS);
  });
  try {
    await Promise.race([fn(), timeout]);
    passed++;
    console.log(`ok ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e && e.message ? e.message.split('\n').slice(0, 4).join(' | ') : e}`);
  } finally {
    clearTimeout(timer);
    while (cleanups.length) await cleanups.pop()().catch(() => {});
  }
}

async function main() {
  // stream: 60 tokens at 40 ms (the tok<i> rule), no client auth; keyed: client
  // keys, short replies; markup: a reply with a code block and HTML in it.
  const [stream, keyed, markup] = await Promise.all([
    serve('stream', ['--serve-no-keys', '--serve-mock-arg=--chunks', '--serve-mock-arg=60',
      '--serve-mock-arg=--delay-ms', '--serve-mock-arg=40']),
    serve('keyed', ['--serve-mock-arg=--chunks', '--serve-mock-arg=10', '--serve-mock-arg=--delay-ms',
      '--serve-mock-arg=20']),
    serve('markup', ['--serve-no-keys', '--serve-mock-arg=--reply-text', `--serve-mock-arg=${MARKUP_REPLY}`,
      '--serve-mock-arg=--delay-ms', '--serve-mock-arg=60']),
  ]);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Playwright gives every launch a fresh temporary profile (user-data-dir).
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 30_000,
  });
  const streamReply = referenceReply(stream);
  const keyedReply = referenceReply(keyed, { Authorization: `Bearer ${GOOD_KEY}` });
  streamReply.catch(() => {});
  keyedReply.catch(() => {});

  const openTracked = async (origin, options) => {
    const o = await open(origin, options);
    cleanups.push(() => o.context.close());
    return o;
  };

  await test('page loads with its headers, no console errors, nothing from another origin', async () => {
    const { page, seen, response } = await openTracked(stream.origin);
    const h = response.headers();
    assert(response.status() === 200, `status ${response.status()}`);
    assert(h['content-type'] === 'text/html; charset=utf-8', `Content-Type ${show(h['content-type'])}`);
    assert((h['content-security-policy'] || '').startsWith("default-src 'none'; script-src 'self'"),
      `CSP ${show(h['content-security-policy'])}`);
    assert(h['x-content-type-options'] === 'nosniff' && h['referrer-policy'] === 'no-referrer' &&
      h['cache-control'] === 'no-cache' && /^"[0-9a-f]{16}"$/.test(h.etag || ''), `headers ${show(h)}`);
    await modelOptions(page);
    assert(await page.locator('#keyform').isHidden(), 'the key field shows without client auth');
    assert(await page.evaluate(() => document.activeElement && document.activeElement.id) === 'input',
      'the message box is not focused on load');
    clean(seen);
    assert(seen.consoleErrors.length === 0, `console: ${show(seen.consoleErrors)}`);
  });

  await test('the model picker lists the upstream\'s models', async () => {
    const { page, seen } = await openTracked(stream.origin);
    const listed = JSON.parse((await request(stream.origin, '/v1/models')).body).data.map((m) => m.id);
    const shown = await modelOptions(page);
    assert(show(shown) === show(listed) && listed.length >= 2, `picker ${show(shown)} vs /v1/models ${show(listed)}`);
    await page.locator('#model').selectOption(listed[1]);
    const reply = await ask(page, 'which model?');
    await finished(page, reply);
    const sent = JSON.parse(seen.posts[seen.posts.length - 1].body);
    assert(sent.model === listed[1], `the POST named model ${show(sent.model)}`);
    clean(seen);
  });

  await test('a reply streams in token by token (Enter sends, Shift+Enter is a new line)', async () => {
    const { page, seen } = await openTracked(stream.origin);
    await modelOptions(page);
    await recordReplies(page);
    const box = page.locator('#input');
    await box.click();
    await page.keyboard.type('first line');
    await page.keyboard.press('Shift+Enter');
    await page.keyboard.type('second line');
    assert(await box.inputValue() === 'first line\nsecond line', `textarea ${show(await box.inputValue())}`);
    assert(seen.posts.length === 0, 'Shift+Enter sent the question');
    await page.keyboard.press('Enter');
    const reply = page.locator('.msg.assistant').first();
    await reply.waitFor({ timeout: 5000 });
    await finished(page, reply);
    const want = await streamReply;
    const got = await textOf(reply);
    assert(got === want, `reply ${show(got.slice(0, 120))}... (${got.length} chars) vs ${want.length} chars`);
    const samples = await page.evaluate(() => window.__samples);
    const partial = samples.filter((s) => s !== want);
    assert(partial.length >= 3, `only ${partial.length} partial renders before the end`);
    for (let i = 1; i < samples.length; i++)
      assert(samples[i].startsWith(samples[i - 1]), `render ${i} does not extend the one before`);
    const userText = await page.locator('.msg.user .text').first().textContent();
    assert(userText === 'first line\nsecond line', `the question shows as ${show(userText)}`);
    const post = seen.posts[0];
    const body = JSON.parse(post.body);
    assert(body.stream === true && body.model === 'gpt-4o-mini' &&
      show(body.messages) === show([{ role: 'user', content: 'first line\nsecond line' }]), `POST body ${post.body}`);
    assert(post.headers['ssegate-resumable'] === '1', `POST headers ${show(post.headers)}`);
    assert(await page.locator('#send').isEnabled() && await page.locator('#stop').isDisabled(),
      'Send/Stop not back to idle');
    clean(seen);
  });

  await test('Stop cancels: the reply stops growing and the gateway stops relaying it', async () => {
    const { page, seen } = await openTracked(stream.origin);
    await modelOptions(page);
    const reply = await ask(page, 'a long answer please');
    await page.waitForFunction((el) => el.querySelector('.text').textContent.length > 20, await reply.elementHandle(),
      { timeout: 5000 });
    assert(await activeStreams(stream) >= 1, 'the gateway counts no stream while one is shown');
    await page.locator('#stop').click();
    await finished(page, reply, 3000);
    const atStop = await textOf(reply);
    await until('ssegate_active_streams back to 0', async () => (await activeStreams(stream)) === 0, 1000);
    // 10 token intervals: a stream still running would have grown by then
    await page.waitForTimeout(400);
    const later = await textOf(reply);
    assert(later === atStop, `the reply grew after Stop: ${atStop.length} -> ${later.length} chars`);
    assert(atStop.length < (await streamReply).length, 'the reply was complete before Stop');
    assert(await noteOf(reply) === 'stopped', `note ${show(await noteOf(reply))}`);
    assert(await page.locator('#send').isEnabled(), 'Send stays disabled after Stop');
    clean(seen, { networkErrorsExpected: true });
  });

  await test('keyboard alone: focus order, visible focus, labels, Stop reachable, Escape stops', async () => {
    const { page, seen } = await openTracked(stream.origin);
    await modelOptions(page);
    for (const sel of ['#input', '#log', '#model', '#stop', '#send'])
      assert(await page.locator(sel).evaluate((el) => Boolean(el.getAttribute('aria-label') || el.labels?.length ||
        el.textContent.trim())), `${sel} has no accessible name`);
    await page.locator('#model').focus();
    const order = [];
    for (let i = 0; i < 3; i++) {
      await page.keyboard.press('Tab');
      order.push(await page.evaluate(() => document.activeElement.id || document.activeElement.tagName));
    }
    assert(show(order) === show(['clear', 'input', 'send']), `Tab order from the picker: ${show(order)}`);
    const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
    assert(outline !== 'none', 'no visible focus ring');
    await page.keyboard.press('Shift+Tab');
    await page.keyboard.type('stop me');
    await page.keyboard.press('Enter');
    const reply = page.locator('.msg.assistant').first();
    await page.waitForFunction(() => {
      const t = document.querySelector('.msg.assistant .text');
      return t && t.textContent.length > 10;
    }, null, { timeout: 5000 });
    await page.keyboard.press('Tab'); // Send is disabled while streaming: Stop is next
    assert(await page.evaluate(() => document.activeElement.id) === 'stop', 'Tab from the box does not reach Stop');
    await page.keyboard.press('Enter');
    await finished(page, reply, 3000);
    assert(await page.evaluate(() => document.activeElement.id) === 'input', 'focus is lost after Stop');
    await page.keyboard.type('again');
    await page.keyboard.press('Enter');
    const second = page.locator('.msg.assistant').nth(1);
    await page.waitForFunction(() => {
      const t = document.querySelectorAll('.msg.assistant .text')[1];
      return t && t.textContent.length > 10;
    }, null, { timeout: 5000 });
    await page.keyboard.press('Escape');
    await finished(page, second, 3000);
    assert(await noteOf(second) === 'stopped', 'Escape did not stop the answer');
    clean(seen, { networkErrorsExpected: true });
  });

  await test('client auth: the key field appears on 401, a wrong key is refused, the right one works', async () => {
    const { page, seen } = await openTracked(keyed.origin);
    await page.locator('#keyform').waitFor({ state: 'visible', timeout: 5000 });
    assert(await page.evaluate(() => document.activeElement.id) === 'key', 'the key field is not focused');
    await page.locator('#key').fill('sk-wrong-0000000000');
    await page.locator('#key').press('Enter');
    await page.waitForFunction(() => document.getElementById('keynote').textContent.length > 0, null, { timeout: 5000 });
    assert(await page.locator('#keyform').isVisible(), 'the key field went away for a wrong key');
    await page.locator('#key').fill(GOOD_KEY);
    await page.locator('#key').press('Enter');
    await page.locator('#keyform').waitFor({ state: 'hidden', timeout: 5000 });
    const listed = await modelOptions(page);
    assert(listed.includes('gpt-4o-mini'), `models ${show(listed)}`);
    assert(await page.evaluate(() => sessionStorage.getItem('ssegate.key')) === GOOD_KEY, 'key not in sessionStorage');
    const want = await keyedReply;
    const first = await ask(page, 'one');
    await finished(page, first);
    assert(await textOf(first) === want, `first reply ${show(await textOf(first))}`);
    const second = await ask(page, 'two');
    await finished(page, second);
    assert(await textOf(second) === want, `second reply ${show(await textOf(second))}`);
    const last = seen.posts[seen.posts.length - 1];
    assert(last.headers.authorization === `Bearer ${GOOD_KEY}`, `Authorization ${show(last.headers.authorization)}`);
    const msgs = JSON.parse(last.body).messages;
    assert(show(msgs) === show([{ role: 'user', content: 'one' }, { role: 'assistant', content: want },
      { role: 'user', content: 'two' }]), `the second POST sent ${show(msgs)}`);
    clean(seen, { networkErrorsExpected: true }); // the 401s
  });

  await test('errors show in place: a 401 body, an upstream 429, an error event mid-stream', async () => {
    const { page, seen } = await openTracked(keyed.origin);
    await page.locator('#key').fill(GOOD_KEY);
    await page.locator('#key').press('Enter');
    await modelOptions(page);
    // the key is revoked under the page's feet
    await page.evaluate(() => sessionStorage.setItem('ssegate.key', 'sk-revoked-000000000'));
    const r401 = await ask(page, 'am I in?');
    await finished(page, r401);
    const e401 = await noteOf(r401, 'error');
    assert(/key/i.test(e401), `401 shown as ${show(e401)}`);
    assert(await page.locator('#keyform').isVisible(), 'a 401 on a question does not bring the key field back');
    await page.evaluate((k) => sessionStorage.setItem('ssegate.key', k), GOOD_KEY);
    // the page cannot set X-Mock-Fault; the test adds it on the way out
    let fault = 'status:429';
    await page.route('**/v1/chat/completions', (route) =>
      route.continue({ headers: { ...route.request().headers(), 'x-mock-fault': fault } }));
    const r429 = await ask(page, 'too many?');
    await finished(page, r429);
    const e429 = await noteOf(r429, 'error');
    assert(e429.includes('Rate limit reached'), `429 shown as ${show(e429)}`);
    fault = 'close-after:3';
    const cut = await ask(page, 'cut me off');
    await finished(page, cut);
    const eCut = await noteOf(cut, 'error');
    const partial = await textOf(cut);
    assert(eCut.length > 0 && partial.length > 0, `mid-stream error ${show(eCut)} after ${show(partial)}`);
    clean(seen, { networkErrorsExpected: true });
  });

  await test('a reply with markup is shown as text: no element made, no script run', async () => {
    const { page, seen } = await openTracked(markup.origin);
    await modelOptions(page);
    const reply = await ask(page, 'show me markup');
    // mid-stream, once the code block is on screen: the README's screenshot
    await page.waitForFunction((el) => {
      const t = el.querySelector('.text');
      return el.querySelector('pre code') && t.textContent.includes('never run.');
    }, await reply.elementHandle(), { timeout: 10_000 });
    assert(await reply.getAttribute('aria-busy') === 'true', 'the reply ended before the screenshot');
    fs.mkdirSync('docs', { recursive: true });
    await page.screenshot({ path: SCREENSHOT });
    await finished(page, reply, 20_000);
    const text = await textOf(reply);
    assert(text.includes('<img src=x onerror=alert(1)>') && text.includes('<b>bold</b>'), `text ${show(text)}`);
    assert(await page.locator('#log img, #log b, #log script').count() === 0, 'model markup became elements');
    assert(await reply.getByText('<img src=x onerror=alert(1)>').isVisible(), 'the markup text is not visible');
    const code = await reply.locator('pre code').textContent();
    assert(code.startsWith('curl -N') && code.includes('"stream":true'), `code block ${show(code)}`);
    clean(seen);
  });

  await test('phone width (360 px): nothing overflows, the controls stay on screen', async () => {
    const { page, seen } = await openTracked(stream.origin, { viewport: { width: 360, height: 640 }, isMobile: true });
    await modelOptions(page);
    const reply = await ask(page, 'a phone-sized question');
    await finished(page, reply);
    const over = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    assert(over <= 0, `the page is ${over} px wider than the screen`);
    for (const sel of ['#input', '#send', '#stop', '#model']) {
      const b = await page.locator(sel).boundingBox();
      assert(b && b.x >= 0 && b.x + b.width <= 360 && b.y + b.height <= 640, `${sel} off screen: ${show(b)}`);
    }
    clean(seen);
  });

  await test('light and dark follow prefers-color-scheme', async () => {
    const colours = {};
    for (const scheme of ['light', 'dark']) {
      const { page, seen } = await openTracked(stream.origin, { colorScheme: scheme });
      colours[scheme] = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
      clean(seen);
    }
    assert(colours.light !== colours.dark, `same background in both: ${show(colours)}`);
  });

  // ---- these need the resumable-stream machinery (ids, Last-Event-ID, /chat/stream) ----

  // Resumes one answer after `interrupt` and checks it against the whole reply.
  const resumeCase = async (origin, interrupt) => {
    const { page, seen, context } = await openTracked(origin);
    await modelOptions(page);
    const reply = await ask(page, 'survive a tunnel');
    await page.waitForFunction((el) => el.querySelector('.text').textContent.length > 15, await reply.elementHandle(),
      { timeout: 5000 });
    await interrupt(context, page);
    await finished(page, reply, 20_000);
    const error = await noteOf(reply, 'error');
    assert(!error, `the answer ended in an error: ${show(error)}`);
    const got = await textOf(reply);
    const want = await streamReply;
    assert(got === want, `the reply differs: ${got.length} vs ${want.length} chars, ends ${show(got.slice(-60))}`);
    assert(await noteOf(reply) === 'reconnected', `note ${show(await noteOf(reply))}: no reconnect happened`);
    const resumed = seen.posts.filter((p) => p.headers['last-event-id']);
    assert(resumed.length >= 1, 'no POST carried Last-Event-ID');
    assert(resumed.every((p) => p.body === seen.posts[0].body), 'a resume sent a different body');
    clean(seen, { networkErrorsExpected: true });
  };

  await test('offline mid-answer and back: the reply completes, no word missing or repeated [resume]', async () => {
    await resumeCase(stream.origin, async (context, page) => {
      await context.setOffline(true);
      await page.waitForFunction(() => !navigator.onLine, null, { timeout: 2000 });
      await page.waitForTimeout(1000); // the outage itself
      await context.setOffline(false);
    });
  });

  await test('the connection cut mid-answer: the page resends with Last-Event-ID and the reply completes [resume]',
    async () => {
      const relay = await cutter(stream.port);
      cleanups.push(async () => relay.close());
      await resumeCase(relay.origin, async () => relay.cut());
    });

  await test('EventSource on /chat/stream gets the whole reply, and again across a cut connection [resume]', async () => {
    const raw = await new Promise((resolve, reject) => {
      const req = http.get(stream.origin + '/chat/stream?q=hello', { timeout: 5000 }, (res) => {
        let data = '';
        res.setEncoding('utf8');
        res.on('data', (d) => {
          data += d;
          if (/\n\n[\s\S]*\n\n/.test(data)) { req.destroy(); resolve({ status: res.statusCode, headers: res.headers, data }); }
        });
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, data }));
      });
      req.on('timeout', () => req.destroy(new Error('/chat/stream: no events within 5 s')));
      req.on('error', reject);
    });
    assert(raw.status === 200 && (raw.headers['content-type'] || '').startsWith('text/event-stream'),
      `/chat/stream: status ${raw.status}, Content-Type ${show(raw.headers['content-type'])}`);
    assert(/^retry: ?\d+$/m.test(raw.data) && /^id: ?\S+$/m.test(raw.data), `no retry:/id: lines in ${show(raw.data.slice(0, 300))}`);

    const relay = await cutter(stream.port);
    cleanups.push(async () => relay.close());
    const { page, seen } = await openTracked(relay.origin);
    const want = await streamReply;
    const listen = (cutAfter) => page.evaluate((n) => new Promise((resolve) => {
      const es = new EventSource('chat/stream?q=hello');
      const out = { text: '', messages: 0, reconnects: 0, failure: null };
      es.addEventListener('message', (e) => {
        out.text += JSON.parse(e.data).content;
        if (++out.messages === n) window.__cut();
      });
      es.addEventListener('done', () => { es.close(); resolve(out); });
      es.addEventListener('error', (e) => {
        if (e.data !== undefined) { out.failure = e.data; es.close(); resolve(out); return; }
        out.reconnects++;
        if (es.readyState === EventSource.CLOSED) { out.failure = 'closed for good'; resolve(out); }
      });
    }), cutAfter);
    await page.exposeFunction('__cut', () => relay.cut());
    const whole = await listen(0);
    assert(!whole.failure && whole.text === want, `uncut: ${show(whole.failure)}, ${whole.text.length} vs ${want.length} chars`);
    const across = await listen(5);
    assert(!across.failure, `across the cut: ${show(across.failure)}`);
    assert(across.reconnects >= 1, 'the connection was never cut');
    assert(across.text === want, `across the cut: ${across.text.length} vs ${want.length} chars: ${show(across.text.slice(0, 120))}`);
    assert(relay.heads.some((h) => /^last-event-id: ?\S+/im.test(h)), 'the reconnect carried no Last-Event-ID');
    clean(seen, { networkErrorsExpected: true });
  });
}

let exitCode = 0;
const overall = setTimeout(() => {
  console.log('FAIL browser: the whole run took over 200 s');
  console.log(`${passed} passed, ${failed + 1} failed`);
  process.exit(1);
}, 200_000);
try {
  await main();
} catch (e) {
  failed++;
  console.log(`FAIL setup: ${e && e.message ? e.message.split('\n').slice(0, 6).join(' | ') : e}`);
} finally {
  if (browser) await browser.close().catch(() => {});
  await stopChildren();
  clearTimeout(overall);
}
if (failed) exitCode = 1;
console.log(`${passed} passed, ${failed} failed`);
process.exit(exitCode);
