// The official `openai` npm package, pointed at ssegate, against tools/mock-upstream.
// Usage: node tests/sdk/stream.mjs PORT   (tests/sdk/run.sh starts the processes)
// Last line: `N passed, N failed`; exit status 1 on any failure.
import OpenAI from 'openai';

const port = process.argv[2];
if (!port) {
  console.log('usage: node stream.mjs PORT');
  console.log('0 passed, 1 failed');
  process.exit(1);
}

// The mock's content rule: delta i is "tok<i> ", every 5th one the escaping-torture string.
const TORTURE = 'q"b\\s\n<é😀> ';
const expected = (n) => Array.from({ length: n }, (_, i) => (i % 5 === 4 ? TORTURE : `tok${i} `)).join('');

const client = new OpenAI({
  apiKey: 'sk-sdk-good-0123456789', // a client key of the gateway's (run.py --serve)
  baseURL: `http://127.0.0.1:${port}/v1`,
  maxRetries: 0,
  timeout: 10_000,
});
const messages = [{ role: 'user', content: 'hello' }];

let passed = 0;
let failed = 0;

async function test(name, fn) {
  const timer = new Promise((_, reject) => {
    const t = setTimeout(() => reject(new Error('timed out after 15 s')), 15_000);
    t.unref();
  });
  try {
    await Promise.race([fn(), timer]);
    passed++;
    console.log(`ok ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e && e.stack ? e.stack.split('\n').slice(0, 3).join(' | ') : e}`);
  }
}

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

const show = (s) => JSON.stringify(s);

await test('stream reassembles exactly', async () => {
  const n = 23;
  const stream = await client.chat.completions.create(
    { model: 'gpt-4o-mini', messages, stream: true },
    { headers: { 'X-Mock-Chunks': String(n) } },
  );
  let content = '';
  let chunks = 0;
  let finish = null;
  for await (const chunk of stream) {
    chunks++;
    assert(chunk.object === 'chat.completion.chunk', `object ${show(chunk.object)}`);
    const c = chunk.choices[0];
    if (c?.delta?.content) content += c.delta.content;
    if (c?.finish_reason) finish = c.finish_reason;
    assert(!chunk.usage, 'usage chunk forwarded although not asked for');
  }
  assert(content === expected(n), `content ${show(content)}\n want ${show(expected(n))}`);
  assert(finish === 'stop', `finish_reason ${show(finish)}`);
  assert(chunks === n + 2, `${chunks} chunks, want ${n + 2} (role, ${n} deltas, finish)`);
});

await test('stream with include_usage', async () => {
  const n = 7;
  const stream = await client.chat.completions.create(
    { model: 'gpt-4o-mini', messages, stream: true, stream_options: { include_usage: true } },
    { headers: { 'X-Mock-Chunks': String(n) } },
  );
  let content = '';
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.choices[0]?.delta?.content) content += chunk.choices[0].delta.content;
    if (chunk.usage) usage = chunk.usage;
  }
  assert(content === expected(n), `content ${show(content)}`);
  assert(usage && Number.isInteger(usage.completion_tokens), `usage ${show(usage)}`);
});

await test('stream helper (chat.completions.stream) final content', async () => {
  const n = 11;
  const runner = client.chat.completions.stream(
    { model: 'gpt-4o-mini', messages },
    { headers: { 'X-Mock-Chunks': String(n) } },
  );
  const final = await runner.finalChatCompletion();
  const content = final.choices[0].message.content;
  assert(content === expected(n), `content ${show(content)}`);
});

await test('non-streaming', async () => {
  const n = 9;
  const r = await client.chat.completions.create(
    { model: 'gpt-4o-mini', messages },
    { headers: { 'X-Mock-Chunks': String(n) } },
  );
  assert(r.object === 'chat.completion', `object ${show(r.object)}`);
  assert(r.choices[0].message.content === expected(n), `content ${show(r.choices[0].message.content)}`);
  assert(r.usage && Number.isInteger(r.usage.total_tokens), `usage ${show(r.usage)}`);
});

await test('non-streaming with raw response: X-Request-Id', async () => {
  const { data, response } = await client.chat.completions
    .create({ model: 'gpt-4o-mini', messages }, { headers: { 'X-Mock-Chunks': '2', 'X-Request-Id': 'sdk-rid-1' } })
    .withResponse();
  assert(data.choices[0].message.content === expected(2), 'content');
  assert(response.headers.get('x-request-id') === 'sdk-rid-1', `x-request-id ${response.headers.get('x-request-id')}`);
});

await test('upstream 429 surfaces as RateLimitError', async () => {
  try {
    await client.chat.completions.create(
      { model: 'gpt-4o-mini', messages },
      { headers: { 'X-Mock-Fault': 'status:429' } },
    );
  } catch (e) {
    assert(e instanceof OpenAI.RateLimitError, `got ${e && e.constructor && e.constructor.name}: ${e}`);
    assert(e.status === 429, `status ${e.status}`);
    assert(typeof e.error?.message === 'string', `error body ${show(e.error)}`);
    return;
  }
  throw new Error('no error thrown');
});

await test('a bad client key is AuthenticationError', async () => {
  const bad = new OpenAI({ apiKey: 'sk-not-a-client', baseURL: `http://127.0.0.1:${port}/v1`, maxRetries: 0 });
  try {
    await bad.chat.completions.create({ model: 'gpt-4o-mini', messages });
  } catch (e) {
    assert(e instanceof OpenAI.AuthenticationError, `got ${e && e.constructor && e.constructor.name}: ${e}`);
    assert(e.status === 401 && e.code === 'invalid_api_key', `status ${e.status} code ${e.code}`);
    return;
  }
  throw new Error('no error thrown');
});

await test('models.list() through the gateway', async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert(ids.length >= 1 && ids.every((id) => typeof id === 'string'), `models ${show(ids)}`);
});

await test('the gateway\'s 429 is RateLimitError, and the SDK retries after Retry-After', async () => {
  const limited = (retries) =>
    new OpenAI({ apiKey: 'sk-sdk-rpm-0123456789', baseURL: `http://127.0.0.1:${port}/v1`, maxRetries: retries });
  const once = limited(0);
  let refused = null;
  for (let i = 0; i < 61 && !refused; i++) {
    try {
      await once.chat.completions.create({ model: 'gpt-4o-mini', messages }, { headers: { 'X-Mock-Chunks': '1' } });
    } catch (e) {
      refused = e;
    }
  }
  assert(refused instanceof OpenAI.RateLimitError, `got ${refused && refused.constructor.name}: ${refused}`);
  assert(refused.headers?.['retry-after'] === '1' || refused.headers?.get?.('retry-after') === '1',
    `retry-after ${show(refused.headers)}`);
  const t0 = Date.now();
  const r = await limited(2).chat.completions.create(
    { model: 'gpt-4o-mini', messages }, { headers: { 'X-Mock-Chunks': '2' } });
  const waited = Date.now() - t0;
  assert(r.choices[0].message.content === expected(2), 'content after the retry');
  assert(waited >= 500, `succeeded after ${waited} ms: it cannot have waited for Retry-After`);
});

await test('files.create streams a multipart upload through', async () => {
  const data = Buffer.alloc(3 * 1024 * 1024, 'ssegate-upload-');
  const file = await client.files.create({ file: await OpenAI.toFile(data, 'data.jsonl'), purpose: 'assistants' });
  assert(file.object === 'file', `object ${show(file.object)}`);
  // the mock reports what reached it: the whole multipart body, the file plus its form framing
  assert(file.bytes > data.length && file.bytes < data.length + 2048, `file ${show(file)}`);
  assert(/^[0-9a-f]{64}$/.test(file.sha256), `sha256 ${show(file.sha256)}`);
  assert(file.content_type.startsWith('multipart/form-data'), `content type ${show(file.content_type)}`);
});

await test('audio.transcriptions.create uploads the audio', async () => {
  const audio = Buffer.from(Array.from({ length: 50000 }, (_, i) => i % 251));
  const t = await client.audio.transcriptions.create({
    file: await OpenAI.toFile(audio, 'speech.wav'), model: 'whisper-1',
  });
  assert(t.text === 'mock transcript', `transcript ${show(t)}`);
});

await test('mid-stream upstream close surfaces as an error', async () => {
  const stream = await client.chat.completions.create(
    { model: 'gpt-4o-mini', messages, stream: true },
    { headers: { 'X-Mock-Chunks': '10', 'X-Mock-Fault': 'close-after:3' } },
  );
  let content = '';
  try {
    for await (const chunk of stream) {
      if (chunk.choices?.[0]?.delta?.content) content += chunk.choices[0].delta.content;
    }
  } catch (e) {
    assert(e instanceof OpenAI.APIError, `got ${e && e.constructor && e.constructor.name}: ${e}`);
    assert(content === expected(3), `content before the error ${show(content)}`);
    return;
  }
  throw new Error(`stream ended without an error after ${show(content)} (silent truncation)`);
});

await test('models list', async () => {
  const page = await client.models.list();
  assert(Array.isArray(page.data), `data ${show(page.data)}`);
});

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
