"""The one check of a file a command is about to write, made before any work (check_output).

    -o/-c/--gguf/--metrics/... path
        a folder, or something that is not a regular file (a device such as /dev/null, a pipe):
            refused (renaming a file over /dev/null, as root, breaks it for the whole system)
        a file of this project's formats that the command does not write (a model file or a
            checkpoint, a token file, a tokenizer file or tokenizer.json, a GGUF file): refused
            unless the command's way out is given (--force, --overwrite), when it has one
        a file the command reads (its input): refused, whatever the flags
        its folder, and a temp file beside it (the name atomic_write uses, a few characters
            longer): made and removed again, so a missing or read-only folder or a name too long
            for the file system stops the command before its first step, not at its first save

Each refusal is one BadInput line naming the flag, the path and the problem.

OutputLock: one writer per output while it runs (./train's -c, prepare_data.py's --out-dir, an
export's outputs), as a writer removes the temp files that a killed writer of the same output left
(formats.remove_stale_temp_files, remove_stale_folders).
"""
import contextlib
import fcntl
import os
import re
import shutil
import stat

import numpy as np

from . import bpe
from .errors import BadInput
from .formats import HEADER_BYTES, MODEL_MAGIC, TOKEN_MAGIC, current_umask, make_temp_file, read_state_meta
from .tokenizer import TOKENIZER_MAGIC

GGUF_MAGIC = b"GGUF"  # a GGUF file's first 4 bytes
MODEL, CHECKPOINT, TOKENS, GGUF = "a model file", "a checkpoint", "a token file", "a GGUF file"
TOKENIZER_FILE, TOKENIZER_JSON = "an llm.c tokenizer file", "a tokenizer.json"


def file_kind(path) -> str | None:
    """What the regular file at `path` holds, when it is one of this project's formats (MODEL ... GGUF):
    by its magic number (a model file with a training state is a checkpoint), or by the name
    tokenizer.json. None for any other file."""
    if os.path.basename(path) == bpe.FILE_NAME:
        return TOKENIZER_JSON
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
    except OSError:
        return None
    if head[:4] == GGUF_MAGIC:
        return GGUF
    if len(head) < HEADER_BYTES:
        return None
    magic = int(np.frombuffer(head[:4], dtype="<i4")[0])
    if magic == MODEL_MAGIC:
        try:
            return CHECKPOINT if read_state_meta(path) is not None else MODEL
        except BadInput:
            return MODEL
    return {TOKEN_MAGIC: TOKENS, TOKENIZER_MAGIC: TOKENIZER_FILE}.get(magic)


def check_output(path, flag: str, replaces: tuple[str, ...] = (), force: str | None = None,
                 forced: bool = False, inputs: dict | None = None) -> None:
    """BadInput unless the command may write `path` (given as `flag`): see the module docstring.
    `replaces`: the kinds (file_kind) the command writes itself (it may replace them); `force`: the flag
    that allows replacing the others, `forced`: whether it was given; `inputs`: {flag: path} of the
    files the command reads, which it never replaces, even forced."""
    path = os.fspath(path)
    where = f"{flag} {path}"
    for source, source_path in (inputs or {}).items():
        if same_file(path, source_path):
            raise BadInput(f"{where}: is the same file as {source}, which it reads; choose another name")
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):  # make_temp_file says what is wrong with the folder
        info = None
    except OSError as e:
        raise BadInput(f"{where}: cannot write it: {e.strerror}") from None
    if info is not None:
        if stat.S_ISDIR(info.st_mode):
            raise BadInput(f"{where}: is a folder, expected a file name")
        if not stat.S_ISREG(info.st_mode):
            raise BadInput(f"{where}: exists and is not a regular file (a device or a pipe); refusing to replace it")
        kind = file_kind(path)
        if kind is not None and kind not in replaces and not forced:
            way_out = f"pass {force} to replace it, or " if force else ""
            raise BadInput(f"{where}: holds {kind}, which this command would replace; {way_out}choose another name")
    check_writable(path, where)


def remove_stale_folders(target) -> None:
    """Delete the hidden folders `.<name>.<random>.tmp` and `.<name>.<random>.old` that an export
    of the folder `target` (hf.export) leaves beside it when it is killed. Only for the writer of
    `target`: another export in progress would lose its folder."""
    parent, name = os.path.split(os.path.abspath(os.fspath(target)))
    pattern = re.compile(r"\." + re.escape(name) + r"\.[a-z0-9_]+\.(tmp|old)")
    with contextlib.suppress(OSError):
        for entry in os.listdir(parent):
            if pattern.fullmatch(entry):
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def same_file(a, b) -> bool:
    """Whether paths a and b (None: no file) name the same existing file."""
    return bool(a and b) and os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def check_writable(path, where: str) -> None:
    """BadInput naming `where` unless a temp file for `path` can be made beside it (made and removed)."""
    fd, tmp = make_temp_file(path, where)
    os.close(fd)
    with contextlib.suppress(FileNotFoundError):  # removed already by the writer that owns `path` (rank 0's start)
        os.unlink(tmp)


class OutputLock:
    """An advisory lock that one process holds on an output for its whole run (./train's -c): an
    exclusive fcntl.flock on `<path>.lock`, which records the holder's pid. The kernel releases it
    when the process ends in any way, a kill included (its file may then stay behind, unlocked, and
    is taken over by the next run); release() removes the file. A second process asking for the lock
    gets BadInput at once, naming the holder."""

    def __init__(self, path, flag: str):
        self.path = os.fspath(path) + ".lock"
        self.fd = None
        while self.fd is None:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = self._holder(fd)
                os.close(fd)
                raise BadInput(f"{flag} {path}: another run ({holder}) is writing it; wait for it to end, "
                               f"or write elsewhere") from None
            if self._still_there(fd):
                self.fd = fd
            else:  # the holder removed the file between our open and our lock: lock the new one
                os.close(fd)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
        except OSError as e:
            raise BadInput(f"{self.path}: cannot create the lock file: {e.strerror}") from None

    def _holder(self, fd: int) -> str:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return f"pid {pid}" if pid.isdigit() else "a process that has not written its pid yet"

    def _still_there(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(self.fd)
            self.fd = None
