"""--source hf against a local HTTP server: download, resume with Range, checksums, no network."""
import hashlib
import http.server
import socket
import threading

import pytest

from test_data import (assert_one_line_error, reference_tokens, run_cli, run_prepare, shard_json,
                             split_tokens, write_archive)

NAME = "TinyStories_all_data.tar.gz"


class ArchiveServer:
    """Serves `payload` at /TinyStories_all_data.tar.gz on 127.0.0.1 (ephemeral port), honouring
    `Range: bytes=N-` unless told not to. `cut_after`: the first response stops after that many bytes
    of body and the connection is closed. `ranges` records each request's Range header (or None)."""

    def __init__(self, payload: bytes, cut_after: int | None = None, honour_range: bool = True):
        self.payload, self.cut_after, self.honour_range, self.ranges = payload, cut_after, honour_range, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/" + NAME:
                    self.send_error(404)
                    return
                wanted = self.headers.get("Range")
                server.ranges.append(wanted)
                start = int(wanted.split("=")[1].split("-")[0]) if wanted and server.honour_range else 0
                body = server.payload[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    body, server.cut_after = body[: server.cut_after], None
                    self.close_connection = True
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/{NAME}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def shards(head_stories):
    return [head_stories[0:30], head_stories[30:60], head_stories[60:100]]


@pytest.fixture
def archive_bytes(tmp_path, shards) -> bytes:
    members = {f"data{i:02d}.json": shard_json(stories) for i, stories in enumerate(shards)}
    return write_archive(tmp_path / "built.tar.gz", members).read_bytes()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{NAME}"  # nothing listens there now: connection refused


def test_download_then_prepare_then_reuse_without_network(tmp_path, shards, archive_bytes):
    cache = tmp_path / "cache"
    with ArchiveServer(archive_bytes) as server:
        out = run_prepare(tmp_path / "out", "--cache-dir", str(cache), "--url", server.url)
    assert server.ranges == [None]
    assert (cache / NAME).read_bytes() == archive_bytes
    digest = hashlib.sha256(archive_bytes).hexdigest()
    assert (cache / (NAME + ".sha256")).read_text() == f"{digest}  {NAME}\n"
    assert split_tokens(out, "val") == reference_tokens(shards[:1])
    assert split_tokens(out, "train") == reference_tokens(shards[1:])
    assert digest in (out / "SOURCE.txt").read_text()

    again = run_prepare(tmp_path / "again", "--cache-dir", str(cache), "--url", closed_port_url())
    assert split_tokens(again, "train") == split_tokens(out, "train")  # the cached archive, no network


def test_interrupted_download_resumes_with_range(tmp_path, archive_bytes):
    cache = tmp_path / "cache"
    with ArchiveServer(archive_bytes, cut_after=1000) as server:
        run_prepare(tmp_path / "out", "--cache-dir", str(cache), "--url", server.url)
    assert server.ranges == [None, "bytes=1000-"]
    assert (cache / NAME).read_bytes() == archive_bytes
    assert not (cache / (NAME + ".part")).exists()


def test_partial_file_from_an_earlier_run_is_resumed(tmp_path, archive_bytes):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / (NAME + ".part")).write_bytes(archive_bytes[:777])
    with ArchiveServer(archive_bytes) as server:
        run_prepare(tmp_path / "out", "--cache-dir", str(cache), "--url", server.url)
    assert server.ranges == ["bytes=777-"]
    assert (cache / NAME).read_bytes() == archive_bytes


def test_server_ignoring_range_restarts_cleanly(tmp_path, archive_bytes):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / (NAME + ".part")).write_bytes(b"x" * 500)  # not even a prefix of the archive
    with ArchiveServer(archive_bytes, honour_range=False) as server:
        run_prepare(tmp_path / "out", "--cache-dir", str(cache), "--url", server.url)
    assert server.ranges == ["bytes=500-"]
    assert (cache / NAME).read_bytes() == archive_bytes


def test_checksum_mismatch_is_one_line_and_the_archive_is_not_used(tmp_path, archive_bytes):
    cache, out = tmp_path / "cache", tmp_path / "out"
    with ArchiveServer(archive_bytes) as server:
        result = run_cli("--cache-dir", str(cache), "--url", server.url, "--sha256", "0" * 64,
                         "--out-dir", str(out), "--tokenizer-file", str(out / "tok.bin"))
    assert_one_line_error(result, NAME, "sha256", "does not match")
    assert sorted(p.name for p in cache.iterdir()) == []  # neither the archive nor its .part is kept
    assert not out.exists()  # nothing written, not even the output folder


def test_wrong_size_is_refused(tmp_path, archive_bytes):
    with ArchiveServer(archive_bytes) as server:
        result = run_cli("--cache-dir", str(tmp_path / "cache"), "--url", server.url, "--size", "12345",
                         "--out-dir", str(tmp_path / "out"), "--tokenizer-file", str(tmp_path / "tok.bin"))
    assert_one_line_error(result, f"{len(archive_bytes)} bytes, expected 12345")


def test_changed_cached_archive_fails_its_recorded_sha256(tmp_path, archive_bytes):
    cache = tmp_path / "cache"
    with ArchiveServer(archive_bytes) as server:
        run_prepare(tmp_path / "out", "--cache-dir", str(cache), "--url", server.url)
    (cache / NAME).write_bytes(archive_bytes[:-1] + bytes([archive_bytes[-1] ^ 1]))
    result = run_cli("--cache-dir", str(cache), "--url", closed_port_url(),
                     "--out-dir", str(tmp_path / "out"), "--tokenizer-file", str(tmp_path / "tok.bin"))
    assert_one_line_error(result, "differs from the one recorded", "delete it")


def test_no_network_is_one_line_naming_the_alternatives(tmp_path):
    result = run_cli("--cache-dir", str(tmp_path / "cache"), "--url", closed_port_url(),
                     "--out-dir", str(tmp_path / "out"), "--tokenizer-file", str(tmp_path / "tok.bin"))
    assert_one_line_error(result, "could not be reached", "--source PATH", "--source synthetic")


def test_fallback_synthetic_warns_and_labels_the_output(tmp_path):
    out = tmp_path / "out"
    result = run_cli("--cache-dir", str(tmp_path / "cache"), "--url", closed_port_url(), "--fallback-synthetic",
                     "--synthetic-stories", "100", "--out-dir", str(out), "--tokenizer-file", str(tmp_path / "tok.bin"))
    assert result.returncode == 0, result.stderr
    warning, = result.stderr.splitlines()
    assert warning.startswith("warning: ") and "could not be reached" in warning and "SYNTHETIC" in warning
    assert "from SYNTHETIC stories (not TinyStories)" in result.stdout
    assert (out / "SOURCE.txt").read_text().startswith("source: SYNTHETIC")
