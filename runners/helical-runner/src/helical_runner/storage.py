"""Local paths and ``s3://`` URIs behind one small interface.

Everything the runner writes goes through :func:`atomic_local_file` or
:func:`put_file`, so a killed run never leaves a file that looks complete:
local files are written under a temporary name and renamed; S3 objects only
appear when their upload completes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput, Transient

S3_ENDPOINT_ENV = "HELICAL_RUNNER_S3_ENDPOINT_URL"
HASH_BLOCK = 8 * 1024 * 1024


@dataclass(frozen=True)
class Location:
    """A parsed URI: either a local path or an S3 bucket/key."""

    uri: str
    bucket: str | None = None
    key: str | None = None

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None

    @property
    def path(self) -> Path:
        if self.is_s3:
            raise ValueError(f"{self.uri} is not a local path")
        return Path(self.uri)

    def child(self, name: str) -> Location:
        if self.is_s3:
            key = f"{self.key.rstrip('/')}/{name}" if self.key else name
            return Location(f"s3://{self.bucket}/{key}", self.bucket, key)
        return Location(str(Path(self.uri) / name))

    def with_suffix(self, suffix: str) -> Location:
        """The same location with ``suffix`` appended to its last component."""
        if self.is_s3:
            return Location(self.uri + suffix, self.bucket, self.key + suffix)
        return Location(self.uri + suffix)

    @property
    def name(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]


def parse(uri: str) -> Location:
    if uri.startswith("s3://"):
        rest = uri[len("s3://") :]
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise BadInput("S3 URI has no bucket", where=uri)
        return Location(uri, bucket, key)
    if "://" in uri:
        raise BadInput("unsupported URI scheme (use a local path or s3://)", where=uri)
    return Location(os.path.abspath(os.path.expanduser(uri)))


_S3_CLIENT = None


def s3_client():
    """One boto3 client per process; endpoint from HELICAL_RUNNER_S3_ENDPOINT_URL."""
    global _S3_CLIENT
    if _S3_CLIENT is None:
        import boto3
        from botocore.config import Config

        endpoint = os.environ.get(S3_ENDPOINT_ENV) or None
        try:
            _S3_CLIENT = boto3.session.Session().client(
                "s3",
                endpoint_url=endpoint,
                config=Config(retries={"max_attempts": 5, "mode": "standard"}),
            )
        except ValueError as exc:
            raise BadInput(
                f"bad S3 endpoint URL in {S3_ENDPOINT_ENV} ({exc})", where=str(endpoint)
            ) from exc
    return _S3_CLIENT


@contextlib.contextmanager
def s3_errors(uri: str) -> Iterator[None]:
    """Translate botocore failures into the runner's error classes."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
    )

    try:
        yield
    except (NoCredentialsError, PartialCredentialsError, NoRegionError) as exc:
        raise BadInput(
            f"S3 is not configured: {exc} (set AWS credentials/region or an IAM role)", where=uri
        ) from exc
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}:
            raise BadInput("no such S3 object", where=uri) from exc
        if code in {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
            raise BadInput(f"S3 access denied ({code})", where=uri) from exc
        raise Transient(f"S3 error {code or exc}", where=uri, reason="io") from exc
    except BotoCoreError as exc:
        raise Transient(f"S3 unreachable: {exc}", where=uri, reason="network") from exc


def exists(loc: Location) -> bool:
    if not loc.is_s3:
        return loc.path.exists()
    from botocore.exceptions import ClientError

    try:
        with s3_errors(loc.uri):
            s3_client().head_object(Bucket=loc.bucket, Key=loc.key)
        return True
    except BadInput:
        return False
    except ClientError:
        return False


def list_names(prefix: Location) -> list[str]:
    """Names directly below a folder/prefix (files only)."""
    if not prefix.is_s3:
        return (
            sorted(p.name for p in prefix.path.iterdir() if p.is_file())
            if prefix.path.is_dir()
            else []
        )
    names: list[str] = []
    key = prefix.key.rstrip("/") + "/"
    with s3_errors(prefix.uri):
        paginator = s3_client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=prefix.bucket, Prefix=key):
            for obj in page.get("Contents", []):
                rest = obj["Key"][len(key) :]
                if rest and "/" not in rest:
                    names.append(rest)
    return sorted(names)


def list_h5ad(uri: str) -> list[str]:
    """``.h5ad`` files a dataset spec names: the file itself, a folder's files
    (not recursive), or every object under an ``s3://`` prefix; sorted."""
    loc = parse(uri)
    if loc.is_s3:
        if loc.key and loc.key.endswith(".h5ad"):
            return [loc.uri]
        found: list[str] = []
        with s3_errors(loc.uri):
            paginator = s3_client().get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=loc.bucket, Prefix=loc.key or ""):
                found += [
                    f"s3://{loc.bucket}/{obj['Key']}"
                    for obj in page.get("Contents", [])
                    if obj["Key"].endswith(".h5ad")
                ]
        return sorted(found)
    if loc.path.is_dir():
        return [str(p) for p in sorted(loc.path.glob("*.h5ad"))]
    if loc.path.is_file():
        return [str(loc.path)]
    raise BadInput("no such file or folder", where=uri)


def delete_tree(loc: Location) -> None:
    """Remove a folder/prefix and everything below it (missing is fine)."""
    if not loc.is_s3:
        shutil.rmtree(loc.path, ignore_errors=True)
        return
    key = loc.key.rstrip("/") + "/"
    with s3_errors(loc.uri):
        client = s3_client()
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=loc.bucket, Prefix=key):
            objs = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objs:
                client.delete_objects(Bucket=loc.bucket, Delete={"Objects": objs})


def get_file(loc: Location, dest: Path) -> None:
    """Download an S3 object to ``dest`` atomically (streamed, bounded memory)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    with s3_errors(loc.uri):
        s3_client().download_file(loc.bucket, loc.key, str(tmp))
    os.replace(tmp, dest)


def put_file(src: Path, loc: Location) -> None:
    """Copy a finished local file to ``loc``; the destination appears whole or not at all."""
    if loc.is_s3:
        with s3_errors(loc.uri):
            s3_client().upload_file(str(src), loc.bucket, loc.key)
        return
    loc.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = loc.path.with_name(loc.path.name + f".tmp{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, loc.path)


def read_bytes(loc: Location) -> bytes:
    if not loc.is_s3:
        return loc.path.read_bytes()
    with s3_errors(loc.uri):
        return s3_client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()


def write_bytes(loc: Location, data: bytes) -> None:
    if loc.is_s3:
        with s3_errors(loc.uri):
            s3_client().put_object(Bucket=loc.bucket, Key=loc.key, Body=data)
        return
    with atomic_local_file(loc.path) as tmp:
        tmp.write_bytes(data)


def read_json(loc: Location) -> dict:
    return json.loads(read_bytes(loc))


def write_json(loc: Location, payload: dict) -> None:
    write_bytes(loc, (json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n").encode())


def current_umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_local_file(path: Path, *, private: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``path`` only on success.

    The file gets the permissions any new file of the user gets (the umask),
    as outputs are meant to be read by others; ``private`` keeps it 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    if not private:
        os.fchmod(fd, 0o666 & ~current_umask())
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def sha256_file(path: Path) -> str:
    """sha256 of a file, or of a folder (a Zarr store): every file's relative path and bytes."""
    digest = hashlib.sha256()
    files = (
        sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [path]
    )
    for file in files:
        if file != path:
            digest.update(str(Path(file).relative_to(path)).encode() + b"\0")
        with open(file, "rb") as fh:
            while block := fh.read(HASH_BLOCK):
                digest.update(block)
    return digest.hexdigest()


def check_writable_folder(folder: Path, *, what: str) -> None:
    """Create ``folder`` if needed and prove a file can be written there (exit 2 if not)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except (FileExistsError, NotADirectoryError) as exc:
        raise BadInput(f"{what} folder is not a folder", where=str(folder)) from exc
    except PermissionError as exc:
        raise BadInput(
            f"{what} folder is not writable (permission denied)", where=str(folder)
        ) from exc


def private_folder(path: Path) -> Path:
    """``path`` as a folder only this user can enter (0700), refusing one another user owns."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.lstat()
    if path.is_symlink() or st.st_uid != os.getuid():
        raise BadInput("input cache folder is not owned by this user", where=str(path))
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def default_cache_dir() -> Path:
    """The user's own cache (never the shared temp folder)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "helical-runner"


class LocalInput:
    """A readable local copy of an input URI (S3 objects are downloaded to a cache).

    ``.h5ad`` files are opened backed through HDF5, which needs a seekable
    local file, so S3 inputs are streamed to ``cache_dir`` once and reused by
    later chunks and shards. The cache is private to the user (0700 folder,
    0600 files) and a cached copy is reused only while its size and ETag
    match the object's.
    """

    def __init__(self, uri: str, *, cache_dir: Path | None = None):
        self.loc = parse(uri)
        self.cache_dir = cache_dir or Path(
            os.environ.get("HELICAL_RUNNER_CACHE") or default_cache_dir()
        )

    def path(self) -> Path:
        if not self.loc.is_s3:
            if self.loc.path.is_dir() and self.loc.uri.rstrip("/").endswith(".zarr"):
                return self.loc.path
            if not self.loc.path.is_file():
                raise BadInput("input file not found", where=self.loc.uri)
            return self.loc.path
        folder = private_folder(private_folder(self.cache_dir) / "inputs")
        key_hash = hashlib.sha256(self.loc.uri.encode()).hexdigest()[:16]
        dest = folder / f"{key_hash}-{self.loc.name}"
        if self.loc.key.rstrip("/").endswith(".zarr"):
            return self._zarr_store(dest)
        with s3_errors(self.loc.uri):
            head = s3_client().head_object(Bucket=self.loc.bucket, Key=self.loc.key)
        remote = {"size": int(head["ContentLength"]), "etag": head.get("ETag", "")}
        stamp = dest.with_name(dest.name + ".source.json")
        if dest.is_file() and stamp.is_file():
            try:
                known = json.loads(stamp.read_text())
            except ValueError:
                known = {}
            if known == {**remote, "uri": self.loc.uri} and dest.stat().st_size == remote["size"]:
                return dest
        stamp.unlink(missing_ok=True)
        with atomic_local_file(dest, private=True) as tmp, s3_errors(self.loc.uri):
            s3_client().download_file(self.loc.bucket, self.loc.key, str(tmp))
            os.chmod(tmp, 0o600)  # boto3 writes a new file of its own
        if dest.stat().st_size != remote["size"]:
            raise Transient("downloaded input has the wrong size", where=self.loc.uri, reason="io")
        with atomic_local_file(stamp, private=True) as tmp:
            tmp.write_text(json.dumps({**remote, "uri": self.loc.uri}))
        return dest

    def _zarr_store(self, dest: Path) -> Path:
        """A Zarr store under an S3 prefix, copied whole; reused while every object's
        size and ETag are unchanged."""
        prefix = self.loc.key.rstrip("/") + "/"
        remote: dict[str, list] = {}
        with s3_errors(self.loc.uri):
            for page in (
                s3_client()
                .get_paginator("list_objects_v2")
                .paginate(Bucket=self.loc.bucket, Prefix=prefix)
            ):
                for obj in page.get("Contents", []):
                    remote[obj["Key"][len(prefix) :]] = [int(obj["Size"]), obj.get("ETag", "")]
        if not remote:
            raise BadInput(
                "no such S3 Zarr store (no objects under the prefix)", where=self.loc.uri
            )
        stamp = dest.with_name(dest.name + ".source.json")
        if dest.is_dir() and stamp.is_file():
            try:
                known = json.loads(stamp.read_text())
            except ValueError:
                known = {}
            if known == {"uri": self.loc.uri, "objects": remote}:
                return dest
        stamp.unlink(missing_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            for rel, (size, _) in remote.items():
                target = tmp / rel
                if ".." in Path(rel).parts:
                    raise BadInput(
                        f"unsafe object name in the Zarr store: '{rel}'", where=self.loc.uri
                    )
                target.parent.mkdir(parents=True, exist_ok=True)
                with s3_errors(self.loc.uri):
                    s3_client().download_file(self.loc.bucket, prefix + rel, str(target))
                os.chmod(target, 0o600)
                if target.stat().st_size != size:
                    raise Transient(
                        "downloaded object has the wrong size", where=self.loc.uri, reason="io"
                    )
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        with atomic_local_file(stamp, private=True) as out:
            out.write_text(json.dumps({"uri": self.loc.uri, "objects": remote}))
        return dest
