"""--source hf against a local Hub on 127.0.0.1: download through huggingface_hub, a broken
connection resumed with Range, checksums, a corrupt file, HF_ENDPOINT, offline mode, no network."""
import hashlib
import http.server
import socket
import threading

import pytest
from conftest import (assert_one_line_error, reference_tokens, run_prepare, run_prepare_data, shard_json,
                      split_tokens, write_archive)

NAME = "TinyStories_all_data.tar.gz"
REPO_ID, REVISION, COMMIT = "roneneldan/TinyStories", "main", "c0ffee" * 6 + "c0ff"
RESOLVE_PATH = f"/datasets/{REPO_ID}/resolve/{REVISION}/{NAME}"


class HubServer:
    """What huggingface_hub asks of the Hub for one file, served on 127.0.0.1 (ephemeral port):
    HEAD and GET on /datasets/{repo}/resolve/{revision}/{file}, answered with X-Repo-Commit, ETag
    and Content-Length, and Range requests answered 206 with Content-Range (unless honour_range is
    False: then the whole file, 200). cut_after: the first GET announces the whole file but closes
    the connection after that many bytes of body. `requests`: (method, Range header or None) of each request for the file."""

    def __init__(self, payload: bytes, cut_after: int | None = None, honour_range: bool = True):
        self.payload, self.cut_after, self.honour_range, self.requests = payload, cut_after, honour_range, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(self):
                self.answer(body=False)

            def do_GET(self):
                self.answer(body=True)

            def answer(self, body: bool):
                if self.path != RESOLVE_PATH:  # e.g. huggingface_hub's daily look-up of /api/agent-harnesses
                    self.send_error(404)
                    return
                wanted = self.headers.get("Range")
                server.requests.append((self.command, wanted))
                start = int(wanted.split("=")[1].split("-")[0]) if wanted and server.honour_range else 0
                data = server.payload[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(server.payload).hexdigest()}"')
                self.end_headers()
                if not body:
                    return
                if server.cut_after is not None:
                    data, server.cut_after = data[: server.cut_after], None
                    self.close_connection = True
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.url = self.endpoint + RESOLVE_PATH

    def gets(self) -> list[str | None]:
        """The Range header of each GET."""
        return [wanted for method, wanted in self.requests if method == "GET"]

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def own_hf_home(tmp_path, monkeypatch):
    """Keep command-line runs away from the user's Hugging Face cache and settings."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    for name in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def shards(head_stories):
    return [head_stories[0:30], head_stories[30:60], head_stories[60:100]]


@pytest.fixture
def archive_bytes(tmp_path, shards) -> bytes:
    members = {f"data{i:02d}.json": shard_json(stories) for i, stories in enumerate(shards)}
    return write_archive(tmp_path / "built.tar.gz", members).read_bytes()


def closed_port_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there now: connection refused


def out_flags(tmp_path) -> list[str]:
    return ["--out-dir", str(tmp_path / "out"), "--tokenizer-file", str(tmp_path / "tok.bin")]


def test_download_then_prepare_then_reuse_without_network(tmp_path, shards, archive_bytes):
    cache = tmp_path / "cache"
    with HubServer(archive_bytes) as server:
        out = run_prepare(tmp_path / "out", "--cache-dir", str(cache), "--url", server.url)
    assert server.gets() == [None]
    assert (cache / NAME).read_bytes() == archive_bytes
    digest = hashlib.sha256(archive_bytes).hexdigest()
    assert (cache / (NAME + ".sha256")).read_text() == f"{digest}  {NAME}\n"
    assert split_tokens(out, "val") == reference_tokens(shards[:1])
    assert split_tokens(out, "train") == reference_tokens(shards[1:])
    assert digest in (out / "SOURCE.txt").read_text()

    again = run_prepare(tmp_path / "again", "--cache-dir", str(cache), "--url", closed_port_endpoint() + RESOLVE_PATH)
    assert split_tokens(again, "train") == split_tokens(out, "train")  # the cached archive, no network


def test_hf_endpoint_serves_the_default_url(tmp_path, archive_bytes, monkeypatch):
    cache = tmp_path / "cache"
    with HubServer(archive_bytes) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        result = run_prepare_data("--cache-dir", str(cache), "--size", str(len(archive_bytes)), *out_flags(tmp_path))
    assert result.returncode == 0, result.stderr
    assert server.gets() == [None]
    assert (cache / NAME).read_bytes() == archive_bytes


@pytest.fixture
def small_chunks(monkeypatch):
    """huggingface_hub hands on what it received in chunks of 10 MB, and resumes after the last whole
    one; with 100-byte chunks, a cut after 1000 bytes resumes at byte 1000."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 100)


def test_interrupted_download_resumes_with_range(tmp_path, archive_bytes, small_chunks):
    cache = tmp_path / "cache"
    with HubServer(archive_bytes, cut_after=1000) as server:
        run_prepare(tmp_path / "out", "--cache-dir", str(cache), "--url", server.url)
    assert server.gets() == [None, "bytes=1000-"]
    assert (cache / NAME).read_bytes() == archive_bytes


def test_server_ignoring_range_restarts_cleanly(tmp_path, archive_bytes, small_chunks):
    cache = tmp_path / "cache"
    with HubServer(archive_bytes, cut_after=1000, honour_range=False) as server:
        run_prepare(tmp_path / "out", "--cache-dir", str(cache), "--url", server.url)
    assert server.gets() == [None, "bytes=1000-"]
    assert (cache / NAME).read_bytes() == archive_bytes


def test_checksum_mismatch_is_one_line_and_the_archive_is_not_used(tmp_path, archive_bytes):
    cache, out = tmp_path / "cache", tmp_path / "out"
    with HubServer(archive_bytes) as server:
        result = run_prepare_data("--cache-dir", str(cache), "--url", server.url, "--sha256", "0" * 64, *out_flags(tmp_path))
    assert_one_line_error(result, NAME, "sha256", "does not match")
    assert not (cache / NAME).exists()
    assert not out.exists()  # nothing written, not even the output folder


def test_corrupt_download_is_one_line_and_deleted(tmp_path):
    cache = tmp_path / "cache"
    with HubServer(b"not a tar.gz archive\n" * 100) as server:
        result = run_prepare_data("--cache-dir", str(cache), "--url", server.url, *out_flags(tmp_path))
    assert_one_line_error(result, NAME, "corrupt or truncated archive")
    assert not (cache / NAME).exists()


def test_wrong_size_is_refused_before_downloading(tmp_path, archive_bytes):
    with HubServer(archive_bytes) as server:
        result = run_prepare_data("--cache-dir", str(tmp_path / "cache"), "--url", server.url, "--size", "12345",
                         *out_flags(tmp_path))
    assert_one_line_error(result, f"the server's file has {len(archive_bytes)} bytes, expected 12345")
    assert server.gets() == []


def test_missing_file_is_one_line(tmp_path, archive_bytes):
    with HubServer(archive_bytes) as server:
        result = run_prepare_data("--cache-dir", str(tmp_path / "cache"), "--url", server.url.replace(NAME, "other.tar.gz"),
                         *out_flags(tmp_path))
    assert_one_line_error(result, "--url", "404")


def test_not_a_hub_address_is_one_line(tmp_path):
    result = run_prepare_data("--cache-dir", str(tmp_path / "cache"), "--url", "http://127.0.0.1:1/" + NAME, *out_flags(tmp_path))
    assert_one_line_error(result, "--url", "not a Hugging Face dataset file address")


def test_changed_cached_archive_fails_its_recorded_sha256(tmp_path, archive_bytes):
    cache = tmp_path / "cache"
    with HubServer(archive_bytes) as server:
        run_prepare(tmp_path / "out", "--cache-dir", str(cache), "--url", server.url)
    (cache / NAME).write_bytes(archive_bytes[:-1] + bytes([archive_bytes[-1] ^ 1]))
    result = run_prepare_data("--cache-dir", str(cache), "--url", closed_port_endpoint() + RESOLVE_PATH, *out_flags(tmp_path))
    assert_one_line_error(result, "differs from the one recorded", "delete it")


def test_no_network_is_one_line_naming_the_alternatives(tmp_path):
    result = run_prepare_data("--cache-dir", str(tmp_path / "cache"), "--url", closed_port_endpoint() + RESOLVE_PATH,
                     *out_flags(tmp_path))
    assert_one_line_error(result, "could not be reached", "--source PATH", "--source synthetic")


def test_offline_mode_is_one_line_naming_the_alternatives(tmp_path, archive_bytes, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with HubServer(archive_bytes) as server:
        result = run_prepare_data("--cache-dir", str(tmp_path / "cache"), "--url", server.url, *out_flags(tmp_path))
    assert_one_line_error(result, "could not be reached", "offline mode", "--source synthetic")
    assert server.requests == []


def test_fallback_synthetic_warns_and_labels_the_output(tmp_path):
    out = tmp_path / "out"
    result = run_prepare_data("--cache-dir", str(tmp_path / "cache"), "--url", closed_port_endpoint() + RESOLVE_PATH,
                     "--fallback-synthetic", "--synthetic-stories", "100", *out_flags(tmp_path))
    assert result.returncode == 0, result.stderr
    warning, = result.stderr.splitlines()
    assert warning.startswith("warning: ") and "could not be reached" in warning and "SYNTHETIC" in warning
    assert "from SYNTHETIC stories (not TinyStories)" in result.stdout
    assert (out / "SOURCE.txt").read_text().startswith("source: SYNTHETIC")
