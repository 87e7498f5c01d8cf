// A service written exactly as WeChat Cloud Run (微信云托管) documents a container: express on
// $PORT (80 by default), the user from the X-WX-* headers the platform adds, WeChat's server
// APIs called at http://api.weixin.qq.com/... with no access_token (Cloud Run's open-API
// service adds it), and a WebSocket that gets the user on its upgrade, as
// wx.cloud.connectContainer gives it. Nothing in here knows about weapp: behind weapp the
// gateway adds the same headers (a route with identity_headers = "cloudrun") and forwards the
// socket (websocket = true), and session-svc's open-API proxy answers api.weixin.qq.com
// (by DNS in docker-compose, or as the HTTP proxy axios reads from HTTP_PROXY).
//
//   GET  /api/wx_openid   the caller, from Cloud Run's headers
//   POST /api/comments    {"content"}: checked by WeChat's content security (msg_sec_check v2)
//   WS   /ws              greets the user, then echoes each message with the sender
'use strict';

const express = require('express');
const axios = require('axios');
const { WebSocketServer } = require('ws');

const app = express();
app.use(express.json());

// Cloud Run's advice: a call from the mini-program has X-WX-SOURCE; the user is X-WX-OPENID.
app.get('/api/wx_openid', (req, res) => {
  if (!req.headers['x-wx-source']) {
    res.status(403).json({ error: 'not called from the mini-program' });
    return;
  }
  res.json({
    openid: req.headers['x-wx-openid'],
    unionid: req.headers['x-wx-unionid'] || null,
    appid: req.headers['x-wx-appid'],
    source: req.headers['x-wx-source'],
    ip: req.headers['x-original-forwarded-for'],
  });
});

// WeChat's API without a token, as the open-API service allows (its allow-list must name
// /wxa/msg_sec_check).
app.post('/api/comments', async (req, res) => {
  try {
    const { data } = await axios.post('http://api.weixin.qq.com/wxa/msg_sec_check', {
      openid: req.headers['x-wx-openid'],
      scene: 2,
      version: 2,
      content: String((req.body && req.body.content) || ''),
    });
    if (data.errcode !== 0) {
      res.status(502).json({ errcode: data.errcode, errmsg: data.errmsg });
      return;
    }
    res.json({ accepted: data.result.suggest === 'pass', suggest: data.result.suggest, label: data.result.label });
  } catch (err) {
    res.status(502).json({ error: String(err.message || err) });
  }
});

const port = Number(process.env.PORT || 80);
const server = app.listen(port, () => console.log(`listening on ${port}`));

const sockets = new WebSocketServer({ server, path: '/ws' });
sockets.on('connection', (socket, req) => {
  const openid = req.headers['x-wx-openid'];
  socket.send(JSON.stringify({ hello: openid }));
  socket.on('message', (data) => socket.send(JSON.stringify({ echo: data.toString(), from: openid })));
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    for (const socket of sockets.clients) socket.close(1001, 'shutting down');
    server.close(() => process.exit(0));
  });
}
