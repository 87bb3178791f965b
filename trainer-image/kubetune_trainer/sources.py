"""Stage `resolve`: turn the spec's model and data sources into local files.

Model: a Hub id (snapshot download, HF_TOKEN from the environment, revision resolved to the
commit sha), an s3:// prefix (parallel download), or a directory on a mounted PVC. Data: one
file or a prefix/directory of shards (jsonl, json, parquet, csv; optionally .gz), a Hub
dataset (loaded later by `datasets`), or inline rows.

Pure helpers (format detection, weight-file checks, fingerprints) are separate from the I/O so
they are unit-tested without S3.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune_api.v1alpha1 import (
    PVC_MOUNT_ROOT,
    DatasetError,
    DataSource,
    FileFormat,
    ModelError,
    ModelSource,
    PVCPath,
    ValidationSpec,
    pvc_mount_path,
)

from .s3 import S3, ChecksumMismatch, sha256_file

log = logging.getLogger(__name__)

# extension -> `datasets` builder name
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
FORMAT_BUILDER = {
    FileFormat.JSONL: "json",
    FileFormat.JSON: "json",
    FileFormat.PARQUET: "parquet",
    FileFormat.CSV: "csv",
}
COMPRESSION = (".gz", ".bz2", ".xz", ".zst")
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
LEGACY_WEIGHTS = (".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt", ".onnx", ".gguf")


# ------------------------------------------------------------------------------------ helpers


def pvc_path(ref: PVCPath) -> Path:
    root = os.environ.get("KUBETUNE_PVC_ROOT", PVC_MOUNT_ROOT)
    return Path(pvc_mount_path(ref.claim_name, root)) / ref.path.lstrip("/")


def describe_pvc(ref: PVCPath) -> str:
    return f"pvc://{ref.claim_name}{ref.path if ref.path.startswith('/') else '/' + ref.path}"


def builder_for(name: str, file_format: str = FileFormat.AUTO) -> str | None:
    """The `datasets` builder for a file name: by fileFormat if given, else by extension
    (compression suffixes ignored). None if the file is not a data file."""
    base = name.lower()
    for c in COMPRESSION:
        if base.endswith(c):
            base = base[: -len(c)]
    ext = os.path.splitext(base)[1]
    by_ext = BUILDERS.get(ext)
    if file_format == FileFormat.AUTO:
        return by_ext
    wanted = FORMAT_BUILDER[FileFormat(file_format)]
    # With an explicit format, files of that format's extensions are the shards.
    exts = {e for e, b in BUILDERS.items() if b == wanted}
    if file_format == FileFormat.JSONL:
        exts = {".jsonl", ".json"}
    return wanted if ext in exts else None


def select_shards(names: list[str], file_format: str, where: str) -> tuple[list[str], str]:
    """The data files among `names` (sorted) and their builder; a DatasetError if there are
    none, or (format auto) if they mix formats."""
    picked = sorted(n for n in names if builder_for(n, file_format))
    if not picked:
        want = (
            ".jsonl, .json, .parquet or .csv"
            if file_format == FileFormat.AUTO
            else f"{file_format} files"
        )
        raise DatasetError(f"no data files ({want}) under {where}")
    builders = {builder_for(n, file_format) for n in picked}
    if len(builders) > 1:
        raise DatasetError(
            f"{where} mixes file formats ({', '.join(sorted(str(b) for b in builders))}); "
            "set dataset.fileFormat or keep one format per prefix"
        )
    return picked, str(builders.pop())


def weight_files(directory: Path) -> list[Path]:
    out: list[Path] = []
    for pat in WEIGHT_PATTERNS:
        out.extend(directory.glob(pat))
    return sorted(out)


def check_model_dir(directory: Path, source: str) -> None:
    """A loadable model directory has config.json and weights; say which is missing."""
    if not directory.is_dir():
        raise ModelError(f"model {source}: not found ({directory} is not a directory)")
    present = sorted(p.name for p in directory.iterdir())
    shown = ", ".join(present[:12]) + (" ..." if len(present) > 12 else "") or "nothing"
    if not (directory / "config.json").is_file():
        raise ModelError(f"model {source}: no config.json (found: {shown})")
    if not weight_files(directory):
        raise ModelError(
            f"model {source}: config.json but no weights (expected model.safetensors, "
            f"model-*-of-*.safetensors or pytorch_model.bin; found: {shown})"
        )


def digest_listing(items: list[tuple[str, int, str]]) -> str:
    """A stable digest of (name, size, etag-or-hash) triples: the revision of a model that has
    no commit sha (S3, PVC)."""
    h = hashlib.sha256()
    for name, size, tag in sorted(items):
        h.update(f"{name}\t{size}\t{tag}\n".encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------ model


@dataclass
class ResolvedModel:
    path: Path
    source: str
    revision: str | None
    kind: str  # hub | s3 | pvc


def resolve_model(src: ModelSource, work_dir: Path, s3: S3 | None) -> ResolvedModel:
    if src.hub_id:
        return _resolve_hub_model(src, work_dir)
    if src.s3_uri:
        assert s3 is not None
        return _resolve_s3_model(src.s3_uri, work_dir, s3)
    assert src.pvc is not None
    path = pvc_path(src.pvc)
    source = describe_pvc(src.pvc)
    check_model_dir(path, source)
    items = [
        (p.relative_to(path).as_posix(), p.stat().st_size, "")
        for p in sorted(path.rglob("*"))
        if p.is_file()
    ]
    items.append(("config.json#sha256", 0, sha256_file(path / "config.json")))
    return ResolvedModel(path=path, source=source, revision=digest_listing(items), kind="pvc")


def resolve_adapter(uri: str, dest: Path, s3: S3) -> Path:
    """Download a PEFT adapter (spec.model.fromJob with artifact adapter: a warm start)."""
    prefix = uri.rstrip("/") + "/"
    objects = [o for o in s3.list_objects(prefix) if not o["Key"].endswith("/")]
    if not any(o["Key"].endswith("adapter_config.json") for o in objects):
        raise ModelError(f"adapter {uri}: no adapter_config.json under that prefix")
    log.info("downloading the base job's adapter %s (%d files)", uri, len(objects))
    s3.download_prefix(prefix, dest, skip=set())
    return dest


def _resolve_s3_model(uri: str, work_dir: Path, s3: S3) -> ResolvedModel:
    from . import modelcache

    prefix = uri.rstrip("/") + "/"
    objects = [o for o in s3.list_objects(prefix) if not o["Key"].endswith("/")]
    if not objects:
        raise ModelError(f"model {uri}: no objects under that prefix")
    _, key_prefix = prefix.split("://", 1)[1].split("/", 1)
    rels = [o["Key"][len(key_prefix) :] for o in objects]
    has_safetensors = any(r.endswith(".safetensors") for r in rels)
    # Only what loading needs: no legacy weight formats next to safetensors, no checkpoints.
    skip = {
        r
        for r in rels
        if r.startswith(("checkpoint-", "checkpoints/"))
        or (has_safetensors and r.lower().endswith(LEGACY_WEIGHTS))
    }
    revision = digest_listing(
        [(r, int(o["Size"]), str(o.get("ETag", ""))) for o, r in zip(objects, rels, strict=True)]
    )
    size = sum(o["Size"] for o, r in zip(objects, rels, strict=True) if r not in skip)
    cache_root = modelcache.root(work_dir.parent)  # work_dir is <workDir>/kubetune-run-<n>

    def download(dest: Path) -> list[dict[str, Any]]:
        log.info(
            "downloading model %s (%d files, %.1f MiB) into the model cache %s",
            uri,
            len(rels) - len(skip),
            size / 2**20,
            cache_root,
        )
        try:
            got = s3.download_prefix(prefix, dest, skip=skip)
        except ChecksumMismatch as e:
            raise ModelError(f"model {uri}: {e}") from e
        check_model_dir(dest, uri)
        return [
            {"rel": o["Key"][len(key_prefix) :], "size": int(o["Size"]), "sha256": o.get("Sha256")}
            for o in got
            if o["Key"][len(key_prefix) :] not in skip
        ]

    path, hit = modelcache.fetch(cache_root, uri, revision, download)
    if hit:
        log.info(
            "model cache hit: %s (revision %s, %.1f MiB) at %s, every file verified by sha256; "
            "nothing downloaded",
            uri,
            revision[:12],
            size / 2**20,
            path,
        )
    else:
        log.info("model cache: stored %s (revision %s) at %s", uri, revision[:12], path)
    check_model_dir(path, uri)
    return ResolvedModel(path=path, source=uri, revision=revision, kind="s3")


def _resolve_hub_model(src: ModelSource, work_dir: Path) -> ResolvedModel:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    assert src.hub_id is not None
    token = os.environ.get("HF_TOKEN") or None
    try:
        info = HfApi(token=token).model_info(
            src.hub_id, revision=src.revision, files_metadata=False
        )
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise ModelError(
            f"model {src.hub_id}: not found or not accessible on the Hub (private or gated "
            f"models need model.tokenSecretRef): {type(e).__name__}"
        ) from e
    except RevisionNotFoundError as e:
        raise ModelError(f"model {src.hub_id}: revision {src.revision!r} not found") from e
    files = [s.rfilename for s in (info.siblings or [])]
    ignore = hub_ignore_patterns(files, src.trust_remote_code)
    sha = info.sha or src.revision
    log.info("downloading model %s@%s from the Hub", src.hub_id, sha)
    path = snapshot_download(src.hub_id, revision=sha, token=token, ignore_patterns=ignore)
    resolved = Path(path)
    check_model_dir(resolved, f"{src.hub_id}@{sha}")
    return ResolvedModel(path=resolved, source=src.hub_id, revision=sha, kind="hub")


def hub_ignore_patterns(files: list[str], trust_remote_code: bool) -> list[str]:
    """Skip legacy weight formats when safetensors exist, and code unless trusted."""
    ignore: list[str] = ["*.md", "original/*", "checkpoint-*/*"]
    if any(f.endswith(".safetensors") for f in files):
        ignore += [f"*{e}" for e in LEGACY_WEIGHTS]
    if not trust_remote_code:
        ignore.append("*.py")
    return ignore


# ------------------------------------------------------------------------------------ data


@dataclass
class ResolvedData:
    """Where rows come from, after download."""

    source: str
    kind: str  # files | hub | inline
    builder: str | None = None
    files: list[Path] = field(default_factory=list)
    hub: Any = None  # HubDataset
    rows: list[dict[str, Any]] | None = None
    file_info: list[dict[str, Any]] = field(default_factory=list)  # name, size, sha256

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"{self.kind}\t{self.source}\n".encode())
        if self.kind == "inline":
            h.update(json.dumps(self.rows, sort_keys=True, default=str).encode())
        elif self.kind == "hub":
            h.update(json.dumps(self.hub.model_dump(mode="json"), sort_keys=True).encode())
        for f in self.file_info:
            h.update(f"{f['name']}\t{f['size']}\t{f['sha256']}\n".encode())
        return h.hexdigest()


def resolve_data(
    src: DataSource | ValidationSpec, dest: Path, s3: S3 | None, what: str
) -> ResolvedData:
    """`what` names the data in errors (dataset / validation)."""
    if src.inline is not None:
        return ResolvedData(source=f"inline ({what})", kind="inline", rows=list(src.inline))
    if src.hub is not None:
        rev = f"@{src.hub.revision}" if src.hub.revision else ""
        return ResolvedData(source=f"hub:{src.hub.name}{rev}", kind="hub", hub=src.hub)
    if src.s3_uri is not None:
        assert s3 is not None
        return _resolve_s3_data(src.s3_uri, src.file_format, dest, s3, what)
    assert src.pvc is not None
    return _resolve_local_data(pvc_path(src.pvc), describe_pvc(src.pvc), src.file_format, what)


def _file_info(paths: list[Path], root: Path | None = None) -> list[dict[str, Any]]:
    return [
        {
            "name": (p.relative_to(root).as_posix() if root else p.name),
            "size": p.stat().st_size,
            "sha256": sha256_file(p),
        }
        for p in paths
    ]


def _resolve_s3_data(uri: str, file_format: str, dest: Path, s3: S3, what: str) -> ResolvedData:
    from botocore.exceptions import ClientError

    try:
        head = None if uri.endswith("/") else s3.head(uri)
        if head is not None:
            name = uri.rsplit("/", 1)[1]
            if builder_for(name, file_format) is None:
                raise DatasetError(
                    f"{what} {uri}: cannot tell the file format from the name; set "
                    "fileFormat (jsonl, json, parquet, csv)"
                )
            local = dest / name
            s3.download_file(uri, local, size=head.get("ContentLength"))
            builder = str(builder_for(name, file_format))
            return ResolvedData(
                source=uri,
                kind="files",
                builder=builder,
                files=[local],
                file_info=_file_info([local]),
            )
        prefix = uri.rstrip("/") + "/"
        objects = [o for o in s3.list_objects(prefix) if not o["Key"].endswith("/")]
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        raise DatasetError(f"{what} {uri}: cannot read ({code or e})") from e
    except ChecksumMismatch as e:
        raise DatasetError(f"{what}: {e}") from e
    if not objects:
        raise DatasetError(f"{what} {uri}: not found (no object at that key, no objects under it)")
    _, key_prefix = prefix.split("://", 1)[1].split("/", 1)
    rels = [o["Key"][len(key_prefix) :] for o in objects]
    shards, builder = select_shards(rels, file_format, f"{what} {uri}")
    paths = []
    sizes = {rel: int(o["Size"]) for rel, o in zip(rels, objects, strict=True)}
    for rel in shards:
        s3.download_file(prefix + rel, dest / rel, size=sizes[rel])
        paths.append(dest / rel)
    log.info("%s: %d shard(s) from %s", what, len(paths), uri)
    return ResolvedData(
        source=uri, kind="files", builder=builder, files=paths, file_info=_file_info(paths, dest)
    )


def _resolve_local_data(path: Path, source: str, file_format: str, what: str) -> ResolvedData:
    if path.is_file():
        builder = builder_for(path.name, file_format)
        if builder is None:
            raise DatasetError(
                f"{what} {source}: cannot tell the file format from the name; set fileFormat"
            )
        return ResolvedData(
            source=source, kind="files", builder=builder, files=[path], file_info=_file_info([path])
        )
    if not path.is_dir():
        raise DatasetError(f"{what} {source}: not found ({path} does not exist)")
    rels = [p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()]
    shards, builder = select_shards(rels, file_format, f"{what} {source}")
    files = [path / r for r in shards]
    return ResolvedData(
        source=source, kind="files", builder=builder, files=files, file_info=_file_info(files, path)
    )
