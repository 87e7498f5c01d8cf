// A stand-in for the mini-program runtime's `wx` object, just enough of it for
// wafer-client-sdk: wx.login / wx.getUserInfo are answered by the WeChat sandbox's mint
// endpoint (as the real WeChat client would answer them), wx.request goes over real HTTP,
// and storage is an in-memory map. The SDK itself is used unmodified.
'use strict';

function createWx({ sandboxUrl }) {
  const storage = new Map();
  const state = {
    mints: 0,
    // What the next wx.login/getUserInfo pair is minted with (a sandbox MintRequest).
    nextMint: {},
    // A code to hand out instead of minting, e.g. one already spent.
    forcedCode: null,
    lastMinted: null,
    requests: [],
  };

  const later = (fn) => setImmediate(fn);

  const wx = {
    login({ success, fail }) {
      fetch(`${sandboxUrl}/sandbox/mint`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(state.nextMint),
      })
        .then((r) => r.json())
        .then((minted) => {
          state.mints += 1;
          state.lastMinted = minted;
          const code = state.forcedCode || minted.code;
          success && success({ code, errMsg: 'login:ok' });
        })
        .catch((err) => fail && fail({ errMsg: `login:fail ${err}` }));
    },

    getUserInfo({ success, fail }) {
      const m = state.lastMinted;
      if (!m) {
        later(() => fail && fail({ errMsg: 'getUserInfo:fail no login' }));
        return;
      }
      later(() =>
        success &&
        success({
          userInfo: m.profile,
          rawData: m.rawData,
          signature: m.signature,
          encryptedData: m.encryptedData,
          iv: m.iv,
          errMsg: 'getUserInfo:ok',
        }),
      );
    },

    // WeChat's own session (session_key) is still valid: the SDK keeps its stored session.
    checkSession({ success }) {
      later(() => success && success({ errMsg: 'checkSession:ok' }));
    },

    request({ url, data, header, method, success, fail, complete }) {
      method = (method || 'GET').toUpperCase();
      let target = url;
      let body;
      if (data !== undefined && data !== null) {
        if (method === 'GET') {
          const qs = new URLSearchParams(data).toString();
          if (qs) target += (target.includes('?') ? '&' : '?') + qs;
        } else {
          body = typeof data === 'string' ? data : JSON.stringify(data);
        }
      }
      state.requests.push({ url: target, method, header: { ...(header || {}) } });
      // wx.request's default content type, unless the caller set one.
      const headers = { ...(header || {}) };
      if (!Object.keys(headers).some((name) => name.toLowerCase() === 'content-type')) {
        headers['content-type'] = 'application/json';
      }
      fetch(target, { method, headers, body })
        .then(async (response) => {
          const text = await response.text();
          let parsed = text;
          try {
            parsed = JSON.parse(text);
          } catch (_) {
            // wx.request hands over non-JSON bodies as strings.
          }
          const result = {
            data: parsed,
            statusCode: response.status,
            header: Object.fromEntries(response.headers),
            errMsg: 'request:ok',
          };
          success && success(result);
          complete && complete(result);
        })
        .catch((err) => {
          const error = { errMsg: `request:fail ${err}` };
          fail && fail(error);
          complete && complete(error);
        });
    },

    getStorageSync: (key) => (storage.has(key) ? storage.get(key) : ''),
    setStorageSync: (key, value) => void storage.set(key, value),
    removeStorageSync: (key) => void storage.delete(key),

    // The runtime's one global socket (wx.connectSocket and its callbacks), as the tutorial's
    // page uses it for /ws with the session the SDK stored; over a real WebSocket (`ws`).
    // The SDK's tunnel module binds these at load time too, unused against weapp.
    connectSocket({ url, header, success, fail }) {
      const WebSocket = require('ws');
      socket.current = new WebSocket(url, { headers: header || {} });
      socket.current.on('open', () => socket.onOpen && socket.onOpen({}));
      socket.current.on('message', (data) => socket.onMessage && socket.onMessage({ data: data.toString() }));
      socket.current.on('close', (code, reason) =>
        socket.onClose && socket.onClose({ code, reason: reason.toString() }));
      socket.current.on('error', (err) => {
        socket.onError && socket.onError({ errMsg: String(err) });
        fail && fail({ errMsg: `connectSocket:fail ${err}` });
      });
      later(() => success && success({ errMsg: 'connectSocket:ok' }));
    },
    onSocketOpen(cb) { socket.onOpen = cb; },
    onSocketMessage(cb) { socket.onMessage = cb; },
    onSocketClose(cb) { socket.onClose = cb; },
    onSocketError(cb) { socket.onError = cb; },
    sendSocketMessage({ data, success }) {
      socket.current.send(data, () => success && success({ errMsg: 'sendSocketMessage:ok' }));
    },
    closeSocket() {
      if (socket.current) socket.current.close();
    },
  };
  const socket = { current: null };

  return { wx, state, storage };
}

module.exports = { createWx };
