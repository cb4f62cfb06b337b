#!/usr/bin/env python3
"""A real SMTP server on loopback for the e-mail tests (aiosmtpd).

    smtp_server.py --dir DIR --ready FILE [--mode smtp|silent]
                   [--cert CERT.pem --key KEY.pem [--implicit-tls]]
                   [--user USER --password PASSWORD]
                   [--max-seconds N]

Listens on 127.0.0.1, on a port the system picks, and writes that port to FILE (atomically)
once it accepts connections. Every connection appends a line to DIR/connections.log. Every
message accepted is written to DIR/msg-NNNN.json:

    {"mail_from": ..., "rcpt_tos": [...], "subject": ..., "body": (decoded text),
     "raw": (the message as received), "tls": bool, "auth_user": str | null}

--mode silent accepts connections and never says a word (a hung mail server).
With --cert/--key the server offers STARTTLS and requires it before anything else; with
--implicit-tls as well, it speaks TLS from the first byte instead ("SMTPS", port 465 style).
With --user/--password it requires AUTH (PLAIN or LOGIN; only over TLS when TLS is on).
The server exits when its parent process goes away, or after --max-seconds.
"""

import argparse
import asyncio
import email
import email.policy
import json
import os
import ssl
import sys
import time
import warnings

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def log_connection(directory, what):
    with open(os.path.join(directory, "connections.log"), "a", encoding="utf-8") as f:
        f.write(f"{time.time():.3f} {what}\n")


class Handler:
    def __init__(self, directory):
        self.directory = directory
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        try:
            body = msg.get_body(preferencelist=("plain",)).get_content()
        except Exception as e:  # noqa: BLE001 - recorded for the test to see
            body = f"(cannot decode the body: {e})"
        auth_user = None
        if session.authenticated and isinstance(session.auth_data, LoginPassword):
            auth_user = session.auth_data.login.decode("utf-8", "replace")
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "subject": str(msg.get("subject", "")),
            "headers": {k: str(v) for k, v in msg.items()},
            "body": body,
            "raw": raw.decode("utf-8", "replace"),
            "tls": session.ssl is not None
            or server.transport.get_extra_info("ssl_object") is not None,
            "auth_user": auth_user,
        }
        name = os.path.join(self.directory, f"msg-{self.count:04d}.json")
        write_atomic(name, json.dumps(record, indent=2))
        return f"250 2.0.0 Ok: queued as test-{self.count}"


class LoggingSMTP(SMTP):
    directory = None

    def connection_made(self, transport):
        log_connection(self.directory, "smtp")
        super().connection_made(transport)


class Silent(asyncio.Protocol):
    directory = None

    def connection_made(self, transport):
        log_connection(self.directory, "silent")
        self.transport = transport  # keep it open, say nothing


def make_authenticator(user, password):
    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    return authenticator


async def watchdog(max_seconds):
    parent = os.getppid()
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline and os.getppid() == parent:
        await asyncio.sleep(0.2)
    os._exit(0)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--ready", required=True)
    ap.add_argument("--mode", choices=["smtp", "silent"], default="smtp")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--implicit-tls", action="store_true")
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--max-seconds", type=float, default=600)
    args = ap.parse_args()
    # aiosmtpd warns about its own deprecated Session.login_data when AUTH succeeds.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    os.makedirs(args.dir, exist_ok=True)
    loop = asyncio.get_running_loop()

    if args.mode == "silent":
        Silent.directory = args.dir
        server = await loop.create_server(Silent, "127.0.0.1", 0)
    else:
        LoggingSMTP.directory = args.dir
        handler = Handler(args.dir)
        tls_context = None
        if args.cert:
            tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls_context.load_cert_chain(args.cert, args.key)
        starttls = tls_context is not None and not args.implicit_tls
        kwargs = {
            "hostname": "smtp.test",
            "tls_context": tls_context if starttls else None,
            "require_starttls": starttls,
            "auth_require_tls": starttls,
        }
        if args.user is not None:
            kwargs["authenticator"] = make_authenticator(args.user, args.password or "")
            kwargs["auth_required"] = True

        def factory():
            return LoggingSMTP(handler, **kwargs)

        implicit = tls_context if args.implicit_tls else None
        server = await loop.create_server(factory, "127.0.0.1", 0, ssl=implicit)

    port = server.sockets[0].getsockname()[1]
    write_atomic(args.ready, str(port))
    await watchdog(args.max_seconds)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
