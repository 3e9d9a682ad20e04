"""A fake Hugging Face Hub on loopback, for tests with no network (tests/oracle/test_hub.py).

It serves the endpoints qtrain and huggingface_hub use, with the Hub's headers:
  GET       /api/{models|datasets}/{org}/{name}/revision/{rev}   {"id", "sha", "siblings": [{"rfilename"}]}
  GET       /api/{models|datasets}/{org}/{name}/tree/{rev}       [{"type": "file", "path", "size", "oid", "lfs"?}]
  HEAD|GET  /[datasets/]{org}/{name}/resolve/{rev}/{path}        X-Repo-Commit, ETag; an LFS file (weights,
            tokenizer.model, data files) answers 302 to /cdn/{sha256} with X-Linked-Etag / X-Linked-Size
  HEAD|GET  /cdn/{sha256}                                        the bytes, with Range (206 + Content-Range)
Errors as the Hub sends them (status + X-Error-Code + X-Error-Message): 404 RepositoryNotFound /
RevisionNotFound / EntryNotFound, 401 GatedRepo for a gated repo without the right Bearer token.
Faults, set by a test on the running server: `drop[sha256] = [n, bytes]` makes the next n GETs of that blob
send `bytes` bytes and then close the connection; `throttle_s` sleeps between 64 KiB chunks; `gate_sha`
holds the first GET of that blob until the test sets `gate_open` (two processes overlap without timing); `log` records (method, path, Range header) of every request.

Run alone (e.g. for `qtrain recipes/guanaco.yaml --dry-run` against it):
  python tests/oracle/fake_hub.py --port 8765 --model huggyllama/llama-7b=../shared/data/models/llama2c-xs-tok512-hf \
      --dataset timdettmers/openassistant-guanaco=openassistant_best_replies_train.jsonl:FILE.jsonl
"""
import argparse
import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".model", ".jsonl", ".parquet")
TOKEN = "hf_fake_token_for_tests"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    def __init__(self, kind, repo_id, files, gated=False, extra_listing=()):
        self.kind, self.repo_id, self.gated = kind, repo_id, gated
        # Names the listing shows beyond the files (a malicious server: "../../x.json"); resolving any of them
        # serves `{}` so that a client that trusts the listing really gets a file to write there.
        self.extra_listing = list(extra_listing)
        self.files = {path: (data if isinstance(data, bytes) else Path(data).read_bytes()) for path, data in files.items()}
        h = hashlib.sha1(repo_id.encode())
        for path in sorted(self.files):
            h.update(path.encode() + b"\0" + hashlib.sha256(self.files[path]).digest())
        self.commit = h.hexdigest()

    def is_lfs(self, path):
        return path.endswith(LFS_SUFFIXES) or len(self.files[path]) > 10_000

    def etag(self, path):
        data = self.files[path]
        return hashlib.sha256(data).hexdigest() if self.is_lfs(path) else git_blob_sha1(data)


class FakeHub:
    def __init__(self):
        self.repos = {}
        self.blobs = {}          # sha256 -> bytes (the LFS storage behind /cdn)
        self.drop = {}           # sha256 -> [remaining drops, bytes sent before dropping]
        self.throttle_s = 0.0
        self.log = []
        self.auth_log = []       # (method, path, Authorization header or None) of every request
        # Signed storage URLs: when cdn_token_uses is a number, each 302 to /cdn carries a fresh token good for
        # that many GETs; a used-up or missing token gets 403 AccessDenied "Request has expired", as S3 answers
        # an X-Amz-Expires URL after its time. None: /cdn needs no token.
        self.cdn_token_uses = None
        self.tokens = {}
        self.cdn_refusals = 0
        # A gate on one blob: the first GET of /cdn/<sha> waits (holding the client's blob lock) until the test
        # sets `gate_open` or gate_timeout_s passes; `gate_held` says a GET reached it, `gate_timed_out` how it ended.
        self.gate_sha = None
        self.gate_open = threading.Event()
        self.gate_held = threading.Event()
        self.gate_timeout_s = 120.0
        self.gate_timed_out = None
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub.handle(self, head=True)

            def do_GET(self):
                hub.handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def add(self, kind, repo_id, files, gated=False, extra_listing=()):
        repo = Repo(kind, repo_id, files, gated, extra_listing)
        self.repos[(kind, repo_id)] = repo
        for path in repo.files:
            if repo.is_lfs(path):
                self.blobs[repo.etag(path)] = repo.files[path]
        return repo

    # ---- responses ----
    def send(self, h, status, headers=None, body=b"", head=False):
        h.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Length", str(len(body)))
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        if not head and body:
            h.wfile.write(body)

    def error(self, h, status, code, message, head):
        body = json.dumps({"error": message}).encode()
        self.send(h, status, {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}, body, head)

    def find(self, h, kind, repo_id, head):
        repo = self.repos.get((kind, repo_id))
        if repo is None:
            self.error(h, 404, "RepositoryNotFound", f"Repository Not Found for url: {h.path}.", head)
            return None
        if repo.gated and h.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.error(h, 401, "GatedRepo", f"Access to {kind} {repo_id} is restricted. You must be authenticated to access it.", head)
            return None
        return repo

    def handle(self, h, head):
        path = unquote(urlsplit(h.path).path)
        with self.lock:
            self.log.append((h.command, path, h.headers.get("Range")))
            self.auth_log.append((h.command, path, h.headers.get("Authorization")))
        parts = path.strip("/").split("/")
        try:
            if parts[0] == "api" and len(parts) >= 6 and parts[4] in ("revision", "tree"):
                return self.api(h, parts, head)
            if parts[0] == "cdn" and len(parts) == 2:
                query = urlsplit(h.path).query
                return self.cdn(h, parts[1], head, query[6:] if query.startswith("token=") else None)
            kind = "dataset" if parts[0] == "datasets" else "model"
            if kind == "dataset":
                parts = parts[1:]
            if len(parts) >= 5 and parts[2] == "resolve":
                return self.resolve(h, kind, "/".join(parts[:2]), parts[3], "/".join(parts[4:]), head)
            self.error(h, 404, "NotFound", f"no route for {path}", head)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def revision(self, h, repo, rev, head):
        if rev in ("main", repo.commit):
            return True
        self.error(h, 404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
        return False

    def api(self, h, parts, head):
        kind = {"models": "model", "datasets": "dataset"}.get(parts[1])
        repo = self.find(h, kind, f"{parts[2]}/{parts[3]}", head)
        if repo is None or not self.revision(h, repo, parts[5], head):
            return
        if parts[4] == "revision":
            body = {"id": repo.repo_id, "sha": repo.commit, "private": False, "gated": "manual" if repo.gated else False,
                    "siblings": [{"rfilename": p} for p in sorted(repo.files) + repo.extra_listing]}
        else:
            body = []
            for p in sorted(repo.files):
                data = repo.files[p]
                entry = {"type": "file", "path": p, "size": len(data), "oid": git_blob_sha1(data)}
                if repo.is_lfs(p):
                    entry["lfs"] = {"oid": repo.etag(p), "size": len(data), "pointerSize": 134}
                body.append(entry)
        self.send(h, 200, {"Content-Type": "application/json"}, json.dumps(body).encode(), head)

    def resolve(self, h, kind, repo_id, rev, file, head):
        repo = self.find(h, kind, repo_id, head)
        if repo is None or not self.revision(h, repo, rev, head):
            return
        if file not in repo.files and repo.extra_listing:
            body = b"{}"
            self.send(h, 200, {"X-Repo-Commit": repo.commit, "ETag": f'"{git_blob_sha1(body)}"'}, body, head)
            return
        if file not in repo.files:
            self.error(h, 404, "EntryNotFound", f"{file} does not exist on \"{rev}\"", head)
            return
        data = repo.files[file]
        common = {"X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes"}
        if repo.is_lfs(file):
            sha = repo.etag(file)
            # Another host name for the same loopback server, as the Hub redirects to its CDN: clients stop at
            # this response for the metadata (huggingface_hub follows same-host redirects only) and drop the token.
            cdn = self.url.replace("127.0.0.1", "localhost")
            location = f"{cdn}/cdn/{sha}"
            if self.cdn_token_uses is not None:
                with self.lock:
                    token = f"t{len(self.tokens)}"
                    self.tokens[token] = self.cdn_token_uses
                location += f"?token={token}"
            self.send(h, 302, {**common, "Location": location, "ETag": f'"{git_blob_sha1(data)}"',
                               "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))}, b"", head)
        else:
            self.send(h, 200, {**common, "ETag": f'"{repo.etag(file)}"', "Content-Type": "application/octet-stream"}, data, head)

    def cdn(self, h, sha, head, token):
        data = self.blobs.get(sha)
        if data is None:
            self.error(h, 404, "NotFound", "no such blob", head)
            return
        if self.cdn_token_uses is not None and not head:
            with self.lock:
                ok = self.tokens.get(token, 0) > 0
                if ok:
                    self.tokens[token] -= 1
                else:
                    self.cdn_refusals += 1
            if not ok:
                body = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
                self.send(h, 403, {"Content-Type": "application/xml"}, body)
                return
        start, status, headers = 0, 200, {"ETag": f'"{sha}"', "Accept-Ranges": "bytes"}
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[6:-1])
            if start >= len(data):
                self.send(h, 416, {"Content-Range": f"bytes */{len(data)}"}, b"", head)
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        headers["Content-Length"] = str(len(body))
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        if head:
            return
        if sha == self.gate_sha and not self.gate_held.is_set():
            self.gate_held.set()
            self.gate_timed_out = not self.gate_open.wait(self.gate_timeout_s)
        cut = None
        with self.lock:
            d = self.drop.get(sha)
            if d and d[0] > 0:
                d[0] -= 1
                cut = d[1]
        sent, chunk = 0, 65536
        while sent < len(body):
            if cut is not None and sent >= cut:
                h.wfile.flush()
                h.close_connection = True
                h.connection.shutdown(socket.SHUT_RDWR)  # the connection drops mid-file
                return
            n = chunk if cut is None else min(chunk, cut - sent)
            h.wfile.write(body[sent:sent + n])
            sent += n
            if self.throttle_s:
                h.wfile.flush()
                time.sleep(self.throttle_s)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--model", action="append", default=[], help="org/name=DIR (every file of DIR)")
    ap.add_argument("--dataset", action="append", default=[], help="org/name=PATH_IN_REPO:FILE")
    a = ap.parse_args()
    hub = FakeHub()
    if a.port:
        hub.server.server_close()
        hub.server = ThreadingHTTPServer(("127.0.0.1", a.port), hub.server.RequestHandlerClass)
        hub.url = f"http://127.0.0.1:{a.port}"
    for m in a.model:
        repo_id, d = m.split("=", 1)
        hub.add("model", repo_id, {p.name: p for p in sorted(Path(d).iterdir()) if p.is_file()})
    for ds in a.dataset:
        repo_id, spec = ds.split("=", 1)
        name, f = spec.split(":", 1)
        hub.add("dataset", repo_id, {name: Path(f)})
    print(f"fake Hub at {hub.url} (HF_ENDPOINT={hub.url})", flush=True)
    hub.server.serve_forever()


if __name__ == "__main__":
    main()
