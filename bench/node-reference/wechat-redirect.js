// Preload (`node --require ./wechat-redirect.js app.js`): wafer-node-session calls
// https://api.weixin.qq.com itself, through the `request` module. This sends those calls to
// WECHAT_BASE_URL (the WeChat sandbox both stacks share) without editing node_modules.
'use strict';

const target = process.env.WECHAT_BASE_URL;
if (!target) {
  throw new Error('set WECHAT_BASE_URL (the WeChat sandbox) for the Node reference stack');
}
// wafer-node-session's own copy of `request`, the one its login module will load.
const request = require(require.resolve('request', { paths: [require.resolve('wafer-node-session')] }));
const originalGet = request.get;
request.get = function redirectedGet(options, ...rest) {
  if (options && typeof options.url === 'string') {
    options = { ...options, url: options.url.replace('https://api.weixin.qq.com', target.replace(/\/$/, '')) };
  }
  return originalGet.call(this, options, ...rest);
};
