// wafer-client-sdk 0.8.4, unmodified, against a running weapp stack (gateway + session-svc +
// WeChat sandbox as separate processes). Needs WEAPP_GATEWAY_URL and WEAPP_SANDBOX_URL; the
// gateway URL may be nginx in front of it (https, with NODE_EXTRA_CA_CERTS trusting its
// certificate): scripts/test.sh runs this directly, through the shipped nginx site and
// through the tutorial's own ssl.conf.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { createWx } = require('./wx-shim');

const gatewayUrl = process.env.WEAPP_GATEWAY_URL;
const sandboxUrl = process.env.WEAPP_SANDBOX_URL;
if (!gatewayUrl || !sandboxUrl) {
  throw new Error('set WEAPP_GATEWAY_URL and WEAPP_SANDBOX_URL (scripts/test.sh does)');
}

// The SDK reads the global `wx`, and keeps module-level state: load a fresh copy per test.
function freshSdk() {
  const shim = createWx({ sandboxUrl });
  global.wx = shim.wx;
  for (const key of Object.keys(require.cache)) {
    if (key.includes('wafer-client-sdk')) delete require.cache[key];
  }
  const sdk = require('wafer-client-sdk');
  sdk.setLoginUrl(`${gatewayUrl}/login`);
  return { sdk, shim };
}

const promisify = (fn, options) =>
  new Promise((resolve, reject) => fn({ ...options, success: (...a) => resolve(a), fail: reject }));

const SESSION_KEY = 'weapp_session_F2C224D4-2BCE-4C64-AF9F-A6D872000D1A';

// wx.connectSocket to `path` on the gateway with the session the SDK stored, as the tutorial's
// page does: `next()` is the next text frame (within 5 s), `closed` the close event.
async function openSocket(shim, path) {
  const session = shim.storage.get(SESSION_KEY);
  const frames = [];
  let arrived = () => {};
  shim.wx.onSocketMessage(({ data }) => { frames.push(data); arrived(); });
  const opened = new Promise((resolve) => shim.wx.onSocketOpen(resolve));
  const closed = new Promise((resolve) => shim.wx.onSocketClose(resolve));
  const wsUrl = gatewayUrl.replace(/^http/, 'ws') + path;
  shim.wx.connectSocket({ url: wsUrl, header: { 'X-WX-Id': session.id, 'X-WX-Skey': session.skey } });
  await opened;
  const next = () => new Promise((resolve, reject) => {
    if (frames.length) return resolve(frames.shift());
    const timer = setTimeout(() => reject(new Error('no frame within 5 s')), 5000);
    arrived = () => { clearTimeout(timer); arrived = () => {}; resolve(frames.shift()); };
  });
  return { next, closed };
}

test('login then /me through the SDK', async () => {
  const { sdk, shim } = freshSdk();
  shim.state.nextMint = { profile: { nickName: 'SDK 用户', gender: 1, language: 'zh_CN', city: 'Shenzhen',
    province: 'Guangdong', country: 'China', avatarUrl: 'https://sandbox.invalid/a.png' } };
  const [userInfo] = await promisify(sdk.login);
  assert.equal(userInfo.nickName, 'SDK 用户');
  const stored = shim.storage.get(SESSION_KEY);
  assert.ok(stored && stored.id && stored.skey, 'the SDK stored the session');

  const [response] = await promisify(sdk.request, { url: `${gatewayUrl}/me`, login: true });
  assert.equal(response.statusCode, 200);
  // Exactly what wafer kept as req.session.userInfo: the decrypted object, watermark included.
  assert.deepEqual(response.data, shim.state.lastMinted.decrypted);
  assert.equal(response.data.openId, shim.state.lastMinted.openid);
  assert.equal(response.data.nickName, 'SDK 用户');
  assert.equal(typeof response.data.watermark.timestamp, 'number');
  const me = shim.state.requests.at(-1);
  assert.equal(me.header['X-WX-Id'], stored.id, 'the SDK sent its session headers');
  assert.equal(shim.state.mints, 1, 'no second login while the session is good');
});

test('a stale session gets ERR_INVALID_SESSION, and the SDK re-logs-in and retries', async () => {
  const { sdk, shim } = freshSdk();
  await promisify(sdk.login);
  const stale = { ...shim.storage.get(SESSION_KEY), skey: 'A'.repeat(43) };
  shim.storage.set(SESSION_KEY, stale);

  const [response] = await promisify(sdk.request, { url: `${gatewayUrl}/me`, login: true });
  assert.equal(response.statusCode, 200);
  assert.deepEqual(response.data, shim.state.lastMinted.decrypted);
  assert.equal(shim.state.mints, 2, 'exactly one re-login');
  const fresh = shim.storage.get(SESSION_KEY);
  assert.notEqual(fresh.skey, stale.skey);
  const statuses = shim.state.requests.map((r) => r.url.replace(gatewayUrl, ''));
  assert.deepEqual(statuses, ['/login', '/me', '/login', '/me']);
});

test('a business route that needs a session makes the SDK log in and retry', async () => {
  // scripts/stack.sh forwards /api/ to the example backend (session required).
  const { sdk, shim } = freshSdk();
  const [response] = await promisify(sdk.request, { url: `${gatewayUrl}/api/hello` });
  assert.equal(response.statusCode, 200);
  assert.equal(response.data.openId, shim.state.lastMinted.openid, 'the backend verified who it is');
  assert.equal(shim.state.mints, 1);
  const paths = shim.state.requests.map((r) => r.url.replace(gatewayUrl, ''));
  assert.deepEqual(paths, ['/api/hello', '/login', '/api/hello']);
});

test('a socket opened with the SDK\'s session receives what a backend published for its user', async () => {
  const { sdk, shim } = freshSdk();
  await promisify(sdk.login);
  const { next } = await openSocket(shim, '/ws');
  assert.match(await next(), /^Server: /);
  // The example backend (behind /api/, scripts/stack.sh) publishes to the caller over gRPC.
  const [response] = await promisify(sdk.request, {
    url: `${gatewayUrl}/api/push`, method: 'POST', data: 'your order shipped', login: true,
  });
  assert.equal(response.statusCode, 200);
  assert.equal(response.data.sockets, 1);
  assert.equal(await next(), 'your order shipped');
  shim.wx.closeSocket();
});

test('a container written for WeChat Cloud Run, behind weapp: wx.request to its route, wx.connectSocket to its socket', async () => {
  const { sdk, shim } = freshSdk();
  await promisify(sdk.login);
  const openid = shim.state.lastMinted.openid;
  // examples/cloudrun-container behind /cloudrun/ (scripts/stack.sh): it reads X-WX-OPENID.
  const [who] = await promisify(sdk.request, { url: `${gatewayUrl}/cloudrun/api/wx_openid`, login: true });
  assert.equal(who.statusCode, 200);
  assert.equal(who.data.openid, openid);
  assert.equal(who.data.source, 'weapp');
  assert.ok(who.data.appid, 'X-WX-APPID reached it');
  // It calls http://api.weixin.qq.com/wxa/msg_sec_check without a token; session-svc adds it.
  const [kind] = await promisify(sdk.request, {
    url: `${gatewayUrl}/cloudrun/api/comments`, method: 'POST', data: { content: 'nice shop' }, login: true,
  });
  assert.equal(kind.statusCode, 200);
  assert.deepEqual(kind.data, { accepted: true, suggest: 'pass', label: 100 });
  const [risky] = await promisify(sdk.request, {
    url: `${gatewayUrl}/cloudrun/api/comments`, method: 'POST', data: { content: 'sandbox-risky deal' }, login: true,
  });
  assert.equal(risky.data.accepted, false);

  const session = shim.storage.get(SESSION_KEY);
  const { next, closed } = await openSocket(shim, '/cloudrun/ws');
  assert.deepEqual(JSON.parse(await next()), { hello: openid });
  shim.wx.sendSocketMessage({ data: 'hi' });
  assert.deepEqual(JSON.parse(await next()), { echo: 'hi', from: openid });
  // A logout closes the business's socket too, as it closes /ws. (Its answer carries wafer's
  // magic key, which the SDK turns into a failure after dropping its copy: asked directly.)
  const out = await fetch(`${gatewayUrl}/logout`, { headers: { 'X-WX-Id': session.id, 'X-WX-Skey': session.skey } });
  assert.equal(out.status, 200);
  const { code } = await closed;
  assert.equal(code, 1008);
});

test('the getPhoneNumber button\'s code becomes the verified number through /phone-number', async () => {
  const { sdk, shim } = freshSdk();
  await promisify(sdk.login);
  // What <button open-type="getPhoneNumber"> hands the mini-program: e.detail.code.
  const minted = await fetch(`${sandboxUrl}/sandbox/phone-code`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ openid: shim.state.lastMinted.openid, purePhoneNumber: '13800138000' }),
  }).then((r) => r.json());
  const [response] = await promisify(sdk.request, {
    url: `${gatewayUrl}/phone-number`, method: 'POST', data: { code: minted.code }, login: true,
  });
  assert.equal(response.statusCode, 200);
  assert.deepEqual(response.data, { phoneNumber: '13800138000', purePhoneNumber: '13800138000', countryCode: '86' });
  // A code is good once: the second try is the client's error, and the session stays.
  const [again] = await promisify(sdk.request, {
    url: `${gatewayUrl}/phone-number`, method: 'POST', data: { code: minted.code }, login: true,
  });
  assert.equal(again.statusCode, 400);
  assert.equal(again.data.error, 'ERR_PHONE_NUMBER_FAILED');
  assert.equal(shim.state.mints, 1, 'no re-login for a used code');
});

test('a request without a session goes on without one', async () => {
  const { sdk } = freshSdk();
  const [response] = await promisify(sdk.request, { url: `${gatewayUrl}/me` });
  assert.equal(response.statusCode, 200);
  assert.deepEqual(response.data, { noBody: true });
});

test('a refused login reaches the SDK as a login failure with WeChat\'s errcode', async () => {
  const { sdk, shim } = freshSdk();
  shim.state.forcedCode = 'a-code-wechat-never-issued';
  await assert.rejects(promisify(sdk.login), (error) => {
    assert.match(error.message, /ERR_LOGIN_FAILED/);
    assert.match(error.message, /40029/);
    return true;
  });
  assert.equal(shim.storage.has(SESSION_KEY), false);
});

test('/me answers any method and any path under it, as express mounted it', async () => {
  const { sdk, shim } = freshSdk();
  await promisify(sdk.login);
  for (const [method, path] of [['POST', '/me'], ['PUT', '/me/profile'], ['GET', '/me/']]) {
    const [response] = await promisify(sdk.request, { url: `${gatewayUrl}${path}`, method, login: true });
    assert.equal(response.statusCode, 200, `${method} ${path}`);
    assert.deepEqual(response.data, shim.state.lastMinted.decrypted, `${method} ${path}`);
  }
});
