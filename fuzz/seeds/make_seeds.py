#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets: real-shaped inputs, so the fuzzer starts from
logins that pass (and from the documented ways they fail) instead of from random bytes.
AES-128-CBC comes from the openssl command line. Run from anywhere; the seeds are committed,
so this only needs running again when a target's input format changes."""
import base64
import hashlib
import json
import os
import pathlib
import subprocess

HERE = pathlib.Path(__file__).resolve().parent
APP_ID = "wx0123456789abcdef"
OPEN_ID = "o-fuzz-user"
NOW = 1_764_000_000


def write(target, name, data):
    folder = HERE / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def encrypt(key, iv, plaintext):
    return subprocess.run(
        ["openssl", "enc", "-aes-128-cbc", "-K", key.hex(), "-iv", iv.hex()],
        input=plaintext, capture_output=True, check=True).stdout


def user_data_seed(name, payload, raw=None, key=None, iv=None, now=NOW, max_age=600, tamper=None):
    key = key or os.urandom(16)
    iv = iv or os.urandom(16)
    plaintext = json.dumps(payload, ensure_ascii=False).encode()
    encrypted = base64.b64encode(encrypt(key, iv, plaintext)).decode()
    session_key = base64.b64encode(key).decode()
    raw = raw if raw is not None else json.dumps({"nickName": "小明", "gender": 1}, ensure_ascii=False)
    signature = hashlib.sha1((raw + session_key).encode()).hexdigest()
    fields = [encrypted, base64.b64encode(iv).decode(), session_key, raw, signature, str(now), str(max_age)]
    if tamper:
        fields = tamper(fields)
    write("user_data", name, "\n".join(fields) + "\n" + plaintext.decode())


def profile(**extra):
    body = {
        "openId": OPEN_ID, "nickName": "Sandbox User", "gender": 1, "language": "zh_CN",
        "city": "Shenzhen", "province": "Guangdong", "country": "China",
        "avatarUrl": "https://example.invalid/a.png",
        "watermark": {"appid": APP_ID, "timestamp": NOW},
    }
    body.update(extra)
    return body


user_data_seed("valid", profile())
user_data_seed("valid-unionid", profile(unionId="u-fuzz"))
user_data_seed("plus-as-space", profile(), tamper=lambda f: [f[0].replace("+", " ")] + f[1:])
user_data_seed("no-padding", profile(), tamper=lambda f: [f[0].rstrip("="), f[1].rstrip("=")] + f[2:])
user_data_seed("foreign-app", profile(watermark={"appid": "wxother", "timestamp": NOW}))
user_data_seed("stale", profile(watermark={"appid": APP_ID, "timestamp": NOW - 86400}))
user_data_seed("other-user", profile(openId="o-someone-else"))
user_data_seed("wrong-key", profile(), tamper=lambda f: f[:2] + [base64.b64encode(os.urandom(16)).decode()] + f[3:])
user_data_seed("bad-signature", profile(), tamper=lambda f: f[:4] + ["0" * 40] + f[5:])
user_data_seed("short-iv", profile(), tamper=lambda f: [f[0], "AAAA"] + f[2:])
user_data_seed("not-json-inside", {"x": 1}, tamper=lambda f: f)

answers = {
    "ok": {"openid": OPEN_ID, "session_key": "tiihtNczf5v6AKRyjwEUhQ=="},
    "ok-unionid": {"openid": OPEN_ID, "session_key": "tiihtNczf5v6AKRyjwEUhQ==", "unionid": "u1"},
    "ok-errcode-0": {"errcode": 0, "openid": OPEN_ID, "session_key": "k"},
    "invalid-code": {"errcode": 40029, "errmsg": "invalid code, rid: 1"},
    "code-used": {"errcode": 40163, "errmsg": "code been used, rid: 2"},
    "minute-quota": {"errcode": 45011, "errmsg": "api minute-quota reach limit"},
    "busy": {"errcode": -1, "errmsg": "system error"},
    "missing-key": {"openid": OPEN_ID},
    "wrong-types": {"openid": 1, "session_key": ["x"], "errcode": "SECRET"},
}
for name, body in answers.items():
    write("wechat_answer", name, json.dumps(body))
write("wechat_answer", "html", "<html><body>500 Internal Server Error</body></html>")
write("wechat_answer", "truncated", '{"openid":"o-truncated","session_k')
write("wechat_answer", "empty", "")

requests = {
    "headers": "\nX-WX-Id: 0123456789abcdef0123456789abcdef\nX-WX-Skey: c2tleQ",
    "query": "X-WX-Id=0123456789abcdef0123456789abcdef&X-WX-Skey=c2tleQ&other=1",
    "lone-id": "x-wx-id=abc",
    "empty-values": "X-WX-Id=&X-WX-Skey=\nX-WX-Id: ",
    "login": "\nX-WX-Code: 081aBcDe0xYz\nX-WX-Encrypted-Data: q83+/AbC==\nX-WX-IV: r7BXXKkLb8qrSNn05n0qiA==",
    "login-query": "X-WX-Code=081a&X-WX-Encrypted-Data=q83+%2FAbC%3D%3D&X-WX-IV=r7BX+Kk%3D",
    "raw-data": "\nX-WX-Raw-Data: {\"nickName\":\"小明\"}\nX-WX-Signature: " + "ab" * 20,
    "percent-garbage": "X-WX-Id=%ZZ%&&=&X-WX-Skey=%E4%B8",
}
for name, text in requests.items():
    write("wafer_params", name, text)

paths = {
    "plain": "/api/orders",
    "dot-dot": "/pub/../api/orders",
    "encoded-dots": "/pub/%2e%2e/api/orders",
    "encoded-slash": "/pub/..%2fapi/orders",
    "path-parameter": "/pub/..;/api/orders",
    "double-encoded": "/pub/%252e%252e/api/orders",
    "slashes-and-dots": "//a//b/./c/../d/",
    "unreserved": "/%61pi/%7euser/a%20b",
    "broken": "/a%zz/b%2",
    "above-root": "/../../x",
    "asterisk": "*",
}
for name, text in paths.items():
    write("path", name, text)

# Request heads: what passes, and the smuggling classics that must not.
heads = {
    "get": "GET /api/orders?a=1 HTTP/1.1\r\nHost: x\r\nX-WX-Id: abc\r\nX-WX-Skey: c2tleQ\r\n\r\n",
    "post-length": "POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    "two-equal-lengths": "POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "chunked": "POST /api/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "cl-te": "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
    "te-obfuscated": "POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n",
    "http10": "GET /ws HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    "expect": "PUT /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    "bare-lf": "GET / HTTP/1.1\nHost: x\n\n",
    "fragment": "GET /a#b HTTP/1.1\r\nHost: x\r\n\r\n",
    "pipelined": "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
}
for name, text in heads.items():
    write("request_head", name, text)

chunked_bodies = {
    "one-chunk": "\x03" + "5;ext=1\r\nhello\r\n0\r\n\r\n",
    "trailers": "\x09" + "3\r\nabc\r\n0\r\nX-T: 1\r\n\r\nNEXT",
    "bare-lf": "\x01" + "3\nabc\r\n0\r\n\r\n",
    "bad-size": "\x00" + "zz\r\n",
}
for name, text in chunked_bodies.items():
    write("chunked", name, text)
