"""Paths that may be local or on any filesystem pyarrow.fs knows (hdfs://, s3://, gs://, file://)."""
import os
import shutil
from urllib.parse import urlparse


def is_local(path):
    path = os.fspath(path)
    scheme = urlparse(path).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def _local(path):
    path = os.fspath(path)
    return urlparse(path).path if path.startswith("file:") else path


def _remote(path):
    from pyarrow import fs
    return fs.FileSystem.from_uri(os.fspath(path))


def join(base, *parts):
    base = os.fspath(base)
    return "/".join([base.rstrip("/"), *parts]) if not is_local(base) else os.path.join(_local(base), *parts)


def makedirs(path):
    if is_local(path):
        os.makedirs(_local(path), exist_ok=True)
    else:
        filesystem, p = _remote(path)
        filesystem.create_dir(p, recursive=True)


def open_output(path):
    """A writable binary stream; local files appear whole (written to a temporary name, then renamed)."""
    if is_local(path):
        return _AtomicFile(_local(path))
    filesystem, p = _remote(path)
    return filesystem.open_output_stream(p)


def open_input(path):
    """A readable, seekable binary file."""
    if is_local(path):
        return open(_local(path), "rb")
    filesystem, p = _remote(path)
    return filesystem.open_input_file(p)


def exists(path):
    if is_local(path):
        return os.path.exists(_local(path))
    from pyarrow import fs
    filesystem, p = _remote(path)
    return filesystem.get_file_info(p).type != fs.FileType.NotFound


def names(path):
    """The names of the entries of a directory."""
    if is_local(path):
        return os.listdir(_local(path))
    from pyarrow import fs
    filesystem, p = _remote(path)
    return [info.base_name for info in filesystem.get_file_info(fs.FileSelector(p))]


def remove(path):
    """Remove a file; a missing one is fine."""
    if is_local(path):
        try:
            os.unlink(_local(path))
        except FileNotFoundError:
            pass
    else:
        from pyarrow import fs
        filesystem, p = _remote(path)
        if filesystem.get_file_info(p).type != fs.FileType.NotFound:
            filesystem.delete_file(p)


def remove_dir(path):
    if is_local(path):
        shutil.rmtree(_local(path), ignore_errors=True)
    else:
        filesystem, p = _remote(path)
        filesystem.delete_dir(p)


def local_path(path):
    """The OS path of a local path or file:// URI (None for remote paths)."""
    return _local(path) if is_local(path) else None


class _AtomicFile:
    def __init__(self, path):
        self.path, self.tmp = path, f"{path}.tmp-{os.getpid()}"
        self.f = open(self.tmp, "wb")

    def write(self, data):
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *rest):
        self.f.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            os.unlink(self.tmp)
