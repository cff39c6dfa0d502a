"""An HTTP service for an exported model (uvicorn + Starlette, no torch); concurrent requests share model calls.

    python serve.py --model exports/mini --port 8000          # 127.0.0.1 only; --host 0.0.0.0 to expose it
    curl -s localhost:8000/v1/classify -d '{"texts": ["you are an idiot"], "policy": "f1"}'
    curl -s localhost:8000/v1alpha1/comments:analyze \\
         -d '{"comment": {"text": "you are an idiot"}, "requestedAttributes": {"TOXICITY": {}}}'
    curl -s localhost:8000/health;  curl -s localhost:8000/v1/model

POST /v1/classify   {"texts": [...], "policy"?: name, "thresholds"?: x | {label: x}} -> {"results": [...]},
                    classifier.Classifier.predict's dicts in order (scores, labels, spans).
POST /v1alpha1/comments:analyze   Perspective API's request and response: comment.text, requestedAttributes
                    (TOXICITY SEVERE_TOXICITY PROFANITY THREAT INSULT IDENTITY_ATTACK for Jigsaw's labels, an
                    export's other labels in capitals: api.attributes; scoreThreshold honoured),
                    doNotStore, languages (en), clientToken -> attributeScores.X.summaryScore.value and
                    spanScores (one per window: begin, end in code points, its score).
GET /health, GET /v1/model (export.json, the runtime, the limits).
Micro-batching: requests wait in one queue; a single worker takes everything queued (at most --max_batch
texts, waiting up to --batch_wait_ms for more) into one model call, then answers each request at its own
thresholds. Limits (--max_body bytes, --max_texts, --max_chars) answer 413, malformed input 400, both as
{"error": {"code", "status", "message", "field"}} naming the field. SIGTERM or Ctrl-C: stop accepting, answer
every request in flight, exit. One log line per request on stderr, with its latency and batch.
--port 0 picks a free port; the "listening on" line names it.
"""
import argparse
import asyncio
import json
import logging
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads; as predict.py: numpy's BLAS is not used

from api import RequestError, analyze_request, attributes, classify_request, error_body, perspective_response
from classifier import Classifier
from common import UsageError, exit_on_error
from scoring import newest_export
# Defaults: a Wikipedia talk-page comment is a few hundred characters; a megabyte one still fits (about
# 400 windows, a few seconds on 2 cores) and the body limit leaves room for JSON's escapes.
MAX_BODY, MAX_TEXTS, MAX_CHARS = 8 << 20, 64, 1 << 20
MAX_BATCH = 64  # texts per model call: enough to sort windows by length, few enough to bound a call's latency
BATCH_WAIT_MS = 2.0
log = logging.getLogger("serve")


# ----------------------------------------------------------------------------
# the micro-batcher: one queue, one model thread

class Batcher:
    """submit(texts, thresholds, windows) -> that request's dicts. One task gathers what is queued into one
    model call on one thread (sessions are not shared across threads), so concurrent requests share it."""

    def __init__(self, clf, max_batch, wait_s):
        self.clf, self.max_batch, self.wait_s = clf, max_batch, wait_s
        self.queue, self.pool = asyncio.Queue(), ThreadPoolExecutor(1, thread_name_prefix="model")
        self.calls = self.texts = self.in_flight = 0

    async def submit(self, texts, th, windows=False):
        fut = asyncio.get_running_loop().create_future()
        self.in_flight += 1
        try:
            await self.queue.put((texts, th, windows, fut))
            return await fut
        finally:
            self.in_flight -= 1

    async def gather(self):
        """The first request queued, then what else comes within wait_s, up to max_batch texts."""
        loop = asyncio.get_running_loop()
        items = [await self.queue.get()]
        n, deadline = len(items[0][0]), loop.time() + self.wait_s
        while n < self.max_batch:
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                if loop.time() >= deadline:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), deadline - loop.time())
                except asyncio.TimeoutError:
                    break
            items.append(item)
            n += len(item[0])
        return items

    def run_batch(self, items):
        """One model call for every queued request's texts, then each request decided at its own thresholds."""
        texts = [t for it in items for t in it[0]]
        scored, out, at = self.clf.score_windows(texts), [], 0
        for req_texts, th, windows, _ in items:
            out.append(self.clf.decide(scored[at:at + len(req_texts)], th, windows))
            at += len(req_texts)
        return out

    async def run(self):
        loop = asyncio.get_running_loop()
        while True:
            items = await self.gather()
            try:
                results = await loop.run_in_executor(self.pool, self.run_batch, items)
            except Exception as e:  # a failed call fails its requests (500), not the service
                log.exception("model call failed")
                for *_, fut in items:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.calls, self.texts = self.calls + 1, self.texts + sum(len(it[0]) for it in items)
            for (*_, fut), res in zip(items, results):
                if not fut.done():  # a client that left cancelled its future
                    fut.set_result((res, len(items)))


# ----------------------------------------------------------------------------
# requests: the body (its formats are api.py's)

async def read_json(request, limit):
    """The request's JSON body, read no further than limit bytes -> the parsed value, or RequestError."""
    size = request.headers.get("content-length", "")
    if size.isdigit() and int(size) > limit:
        raise RequestError(413, "body", f"body: {int(size):,} bytes, over the limit of {limit:,} (--max_body)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, "body", f"body: over the limit of {limit:,} bytes (--max_body)")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:
        raise RequestError(400, "body", f"body: not valid JSON ({getattr(e, 'msg', 'nested too deep')})") from None


# ----------------------------------------------------------------------------
# the app

def make_app(clf, limits, max_batch=MAX_BATCH, wait_ms=BATCH_WAIT_MS):
    """The ASGI app: four routes, the batcher started and stopped with it, a log line per request."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    batcher, attrs = Batcher(clf, max_batch, wait_ms / 1000), attributes(clf.labels)

    def fail(e):
        return JSONResponse(error_body(e.code, e.field, str(e)), status_code=e.code)

    async def classify(request):
        try:
            texts, th = classify_request(await read_json(request, limits["max_body"]), clf, limits)
        except RequestError as e:
            return fail(e)
        results, batch = await batcher.submit(texts, th)
        request.scope["note"] = f"texts={len(texts)} batch={batch}"
        return JSONResponse({"results": results})

    async def analyze(request):
        try:
            body = await read_json(request, limits["max_body"])
            text, wanted = analyze_request(body, limits, attrs)
        except RequestError as e:
            return fail(e)
        (result,), batch = await batcher.submit([text], clf.default_thresholds, windows=True)
        request.scope["note"] = f"texts=1 batch={batch}"
        return JSONResponse(perspective_response(result, wanted, body, attrs))

    async def health(request):
        return JSONResponse({"status": "ok", "in_flight": batcher.in_flight, "model_calls": batcher.calls,
                             "texts_scored": batcher.texts})

    async def model_info(request):
        return JSONResponse(dict(clf.meta, serving={"runtime": clf.runtime, "why": clf.why, "limits": limits,
                                                    "default_thresholds": dict(zip(clf.labels, clf.default_thresholds)),
                                                    "max_batch": max_batch, "batch_wait_ms": wait_ms}))

    async def http_error(request, exc):  # 404 and 405 as JSON too
        return JSONResponse(error_body(exc.status_code, "path", f"{request.method} {request.url.path}: "
                                                                f"{exc.detail}"), status_code=exc.status_code)

    async def internal_error(request, exc):  # logged with its traceback by Starlette; the client gets JSON
        return JSONResponse(error_body(500, None, f"internal error: {type(exc).__name__}"), status_code=500)

    @asynccontextmanager
    async def lifespan(app):
        task = asyncio.get_running_loop().create_task(batcher.run())
        yield  # uvicorn has answered every request in flight when this resumes
        task.cancel()
        batcher.pool.shutdown()
        log.info(f"stopped after {batcher.texts:,} texts in {batcher.calls:,} model calls")

    app = Starlette(routes=[Route("/v1/classify", classify, methods=["POST"]),
                            Route("/v1alpha1/comments:analyze", analyze, methods=["POST"]),
                            Route("/health", health, methods=["GET"]), Route("/v1/model", model_info, methods=["GET"])],
                    exception_handlers={HTTPException: http_error, Exception: internal_error}, lifespan=lifespan)
    return request_log(app)


def request_log(app):
    """ASGI middleware: one line per request, written when its response has gone: method, path, status,
    latency from the first byte read to the last written, and the route's note (texts, batch size)."""
    async def logged(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        t0, status = time.perf_counter(), [0]

        async def send_logged(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                log.info(f"{scope['method']} {scope['path']} {status[0]} {1000 * (time.perf_counter() - t0):.1f} ms"
                         f" {scope.get('note', '')}".rstrip())
        await app(scope, receive, send_logged)
    return logged


# ----------------------------------------------------------------------------

def listen(host, port):
    """The bound socket, here rather than in uvicorn: a port in use is one line and exit 2, and port 0 works."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP, and without it the
    # response's two writes (headers, body) meet the client's delayed ACK: +40 ms a request (measured)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UsageError(f"--host {host} --port {port}: cannot listen ({e.strerror or e})") from None
    sock.listen(1024)
    return sock


def main(argv=None):
    p = argparse.ArgumentParser(description="Serve an exported model over HTTP (see the docstring).")
    p.add_argument("--model", help="export folder (default: the newest under exports/)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free one, named in the log)")
    p.add_argument("--runtime", default="auto", help="auto (the fastest for this CPU), openvino, onnxruntime-int8 "
                                                     "or onnxruntime-fp32")
    p.add_argument("--max_batch", type=int, default=MAX_BATCH, help="texts per model call at most")
    p.add_argument("--batch_wait_ms", type=float, default=BATCH_WAIT_MS, help="how long a model call waits for "
                                                                                "more requests to join it")
    p.add_argument("--max_body", type=int, default=MAX_BODY, help="bytes a request body may have")
    p.add_argument("--max_texts", type=int, default=MAX_TEXTS, help="texts a /v1/classify request may have")
    p.add_argument("--max_chars", type=int, default=MAX_CHARS, help="characters a text may have")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    with exit_on_error():
        for flag in ("max_batch", "max_body", "max_texts", "max_chars"):
            if getattr(args, flag) < 1:
                raise UsageError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
        if not 0 <= args.batch_wait_ms <= 10_000:
            raise UsageError(f"--batch_wait_ms must be in [0, 10000], got {args.batch_wait_ms}")
        import uvicorn  # heavy: imported once the flags are good
        model_dir = args.model or newest_export()
        clf = Classifier(model_dir, args.runtime)
        clf.predict(["warm up"])  # the first call allocates; no request should pay for it
        limits = {k: getattr(args, k) for k in ("max_body", "max_texts", "max_chars")}
        sock = listen(args.host, args.port)
        host, port = sock.getsockname()[:2]
        log.info(f"model: {clf.path} on {clf.runtime} ({clf.why})")
        log.info(f"listening on http://{host}:{port}")
        # uvicorn's own SIGTERM/SIGINT handling: stop accepting, close idle connections, wait for the
        # requests in flight, run the lifespan's end; then it re-raises the signal (exit 128 + N)
        server = uvicorn.Server(uvicorn.Config(make_app(clf, limits, args.max_batch, args.batch_wait_ms),
                                               log_level="warning", access_log=False, lifespan="on"))
        server.run(sockets=[sock])


if __name__ == "__main__":
    main()
