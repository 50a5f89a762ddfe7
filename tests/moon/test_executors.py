"""The three executor kinds compose into one durable workflow: Python, subprocess and HTTP."""

from __future__ import annotations

import http.server
import json
import sys
import threading

from moon.worker import Result, http_handler, subprocess_handler

from .engine_world import dispatch, engine, step, worker


class Upper(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Upper.seen.append(self.headers["Idempotency-Key"])
        out = "|".join(body["inputs"].values()).upper().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


async def test_python_subprocess_and_http_steps_run_as_one_workflow(nc, js, space):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upper)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"

    async def python(ctx):
        return Result(output=b"hello")

    echo = [sys.executable, "-c",
            "import sys, json; o = json.load(sys.stdin); print(o['inputs']['p'] + ' world')"]
    try:
        async with engine(nc, space) as eng, \
                worker(nc, space, {"py": python}, executor_id="px"), \
                worker(nc, space, {"sh": subprocess_handler(echo)}, executor_id="sx"), \
                worker(nc, space, {"web": http_handler(url)}, executor_id="hx"):
            command = dispatch([step("p", "py"), step("s", "sh", ("p",)),
                                step("h", "web", ("s",))])
            await eng.submit(command)
            final = await eng.wait_terminal(command.workflow_id, 30)
    finally:
        server.shutdown()
    assert final.status == "completed"
    assert final.steps["s"].result == b"hello world\n"
    assert final.steps["h"].result == b"HELLO WORLD\n"
    assert Upper.seen == [f"{command.workflow_id}/h/1"]
