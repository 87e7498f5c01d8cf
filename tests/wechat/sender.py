"""WeChat's message push, as WeChat's servers make it: written from WeChat's documentation
(message push, "message encryption and decryption"), sharing no code with weapp.

Reads one JSON request description on stdin and prints the request to send:

  {"token": "...", "encoding_aes_key": "..." | null, "appid": "wx...",
   "mode": "url_check" | "plaintext" | "compatible" | "safe",
   "format": "xml" | "json", "fields": {...}, "timestamp": "1409735669",
   "nonce": "1320562132", "echostr": "...", "random": "16 bytes as hex" (optional)}

  -> {"method": "GET" | "POST", "query": "...", "body": "...", "content_type": "..."}

`signature = sha1(sorted [Token, timestamp, nonce] joined)`; in safe and compatible modes
`msg_signature = sha1(sorted [Token, timestamp, nonce, Encrypt] joined)`, and Encrypt is
AES-256-CBC (key = base64(EncodingAESKey + "="), IV = its first 16 bytes, PKCS#7 padding to
32 bytes) of random(16) | length (4 bytes, big-endian) | message | appid.
"""
import base64
import hashlib
import json
import os
import struct
import sys
import urllib.parse

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def sha1_sorted(*parts):
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def encrypt(encoding_aes_key, appid, message, random=None):
    key = base64.b64decode(encoding_aes_key + "=")
    assert len(key) == 32
    random = random or os.urandom(16)
    plain = random + struct.pack(">I", len(message)) + message + appid.encode()
    pad = 32 - len(plain) % 32
    plain += bytes([pad]) * pad
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()


def xml(fields):
    """WeChat's XML: strings in CDATA, numbers bare, nested objects as elements."""
    def render(name, value):
        if isinstance(value, dict):
            return f"<{name}>" + "".join(render(k, v) for k, v in value.items()) + f"</{name}>"
        if isinstance(value, list):
            return "".join(render(name, v) for v in value)
        if isinstance(value, (int, float)):
            return f"<{name}>{value}</{name}>"
        return f"<{name}><![CDATA[{value}]]></{name}>"
    return "<xml>" + "".join(render(k, v) for k, v in fields.items()) + "</xml>"


def body_of(fields, fmt):
    if fmt == "xml":
        return xml(fields), "text/xml"
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")), "application/json"


def main():
    spec = json.load(sys.stdin)
    token, timestamp, nonce = spec["token"], str(spec["timestamp"]), str(spec["nonce"])
    query = {
        "signature": sha1_sorted(token, timestamp, nonce),
        "timestamp": timestamp,
        "nonce": nonce,
    }
    mode = spec["mode"]
    if mode == "url_check":
        query["echostr"] = spec["echostr"]
        out = {"method": "GET", "body": "", "content_type": ""}
    else:
        fields = spec["fields"]
        fmt = spec.get("format", "xml")
        if mode == "plaintext":
            body, content_type = body_of(fields, fmt)
        else:
            message, _ = body_of(fields, fmt)
            random = bytes.fromhex(spec["random"]) if spec.get("random") else None
            encrypted = encrypt(spec["encoding_aes_key"], spec["appid"], message.encode(), random)
            outer = {"ToUserName": fields.get("ToUserName", "")}
            if mode == "compatible":
                outer = dict(fields)
            outer["Encrypt"] = encrypted
            body, content_type = body_of(outer, fmt)
            query["encrypt_type"] = "aes"
            query["msg_signature"] = sha1_sorted(token, timestamp, nonce, encrypted)
        out = {"method": "POST", "body": body, "content_type": content_type}
    out["query"] = urllib.parse.urlencode(query)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
